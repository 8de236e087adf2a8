/**
 * TLS and user/password of an etcd source or sink, from its URI's parameters:
 *
 *   ca=<file>            the CA of the etcd server's certificate; turns TLS on
 *   cert=<file>&key=<file>  a client certificate and its key (together; need ca)
 *   user=<name>&passwordFile=<file>  etcd auth (together)
 *
 * Files are absolute paths (no `.` or `..` segments) and must lie under the capture's
 * `--credentials-root` ({@link checkCredentialFile}, checked when a changefeed is created
 * and again before a capture reads them). A password in the URI (`etcd://u:p@host`, a
 * `password=` parameter) is refused: it would be stored in etcd and shown in answers.
 */
import { isAbsolute } from 'node:path';
import type { Etcd3 } from 'etcd3';
import type { EtcdSecurity } from '../cluster/etcd-client.ts';
import { createEtcdClient } from '../cluster/etcd-client.ts';
import type { EtcdSecurityFiles } from '../security/etcd-security.ts';
import { EtcdSecurityError, readEtcdSecurity } from '../security/etcd-security.ts';
import { BoundsError, checkCredentialFile, forbiddenTreeOf } from './bounds.ts';
import { BadUriError } from './uri.ts';

/** The URI parameters this module reads. */
export const etcdSecurityParams = ['ca', 'cert', 'key', 'user', 'passwordFile'] as const;

/** What the files are called in messages. */
const parameterNames = { ca: 'parameter ca', cert: 'parameter cert', key: 'parameter key', passwordFile: 'parameter passwordFile' } as const;

/** The security files of an etcd URI; undefined when it names none. */
export type EtcdUriSecurity = EtcdSecurityFiles | undefined;

/**
 * Why a credential file path cannot be used, or undefined: it must be absolute, without
 * `.` or `..` segments, NUL or `\`, and outside /proc, /sys and /dev. Shared by every URI
 * parameter that names a credential file (the postgres sink's `passwordFile` too).
 */
export function credentialPathProblem(path: string): string | undefined {
  if (path === '' || !isAbsolute(path)) return 'must be an absolute path';
  if (/[\\\u0000]/.test(path) || path.split('/').some((segment) => segment === '.' || segment === '..')) return 'must not contain ".", ".." segments, "\\" or NUL';
  const tree = forbiddenTreeOf(path);
  if (tree !== undefined) return `must be outside /proc, /sys and /dev (it is under ${tree})`;
  return undefined;
}

function pathParam(url: URL, name: string, what: string): string | undefined {
  const value = url.searchParams.get(name);
  if (value === null) return undefined;
  const problem = credentialPathProblem(value);
  if (problem !== undefined) throw new BadUriError(`${what} uri parameter ${name}=${JSON.stringify(value.slice(0, 200))} ${problem}`);
  return value;
}

/** Parses the security parameters of an etcd source or sink URI (`what`: "source", "sink"). */
export function parseEtcdUriSecurity(url: URL, what: string): EtcdUriSecurity {
  if (url.username !== '' || url.password !== '') {
    throw new BadUriError(`${what} uri must not hold a user or password before the host (etcd://user:password@...): give user=<name> and passwordFile=<file under --credentials-root>`);
  }
  for (const name of ['password', 'pass', 'passwd', 'pwd']) {
    if (url.searchParams.has(name)) throw new BadUriError(`${what} uri parameter "${name}" is not allowed: put the password in a file under --credentials-root and give passwordFile=<file>`);
  }
  const caFile = pathParam(url, 'ca', what);
  const certFile = pathParam(url, 'cert', what);
  const keyFile = pathParam(url, 'key', what);
  const passwordFile = pathParam(url, 'passwordFile', what);
  const user = url.searchParams.get('user') ?? undefined;
  if ((certFile === undefined) !== (keyFile === undefined)) throw new BadUriError(`${what} uri parameters cert and key go together`);
  if (certFile !== undefined && caFile === undefined) throw new BadUriError(`${what} uri parameter cert needs ca (the CA of the etcd server's certificate)`);
  if ((user === undefined) !== (passwordFile === undefined)) throw new BadUriError(`${what} uri parameters user and passwordFile go together`);
  if (user !== undefined && !/^[\x21-\x7e]{1,128}$/.test(user)) throw new BadUriError(`${what} uri parameter user must be 1-128 printable characters without spaces`);
  if (caFile === undefined && user === undefined) return undefined;
  return { caFile, certFile, keyFile, user, passwordFile };
}

/** The files of `security` as a list of [parameter, path]. */
function namedFiles(security: EtcdSecurityFiles): [string, string][] {
  const files: [string, string | undefined][] = [['ca', security.caFile], ['cert', security.certFile], ['key', security.keyFile], ['passwordFile', security.passwordFile]];
  return files.filter((entry): entry is [string, string] => entry[1] !== undefined);
}

/**
 * Checks every file of `security` against `credentialsRoot` (undefined: none is allowed,
 * e.g. a caller without bounds), then reads them; throws a non-retryable
 * {@link BoundsError} naming the parameter. Undefined when the URI names no file.
 */
export async function loadEtcdUriSecurity(security: EtcdUriSecurity, credentialsRoot: string | undefined): Promise<EtcdSecurity | undefined> {
  if (security === undefined) return undefined;
  const real: Record<string, string> = {};
  for (const [parameter, path] of namedFiles(security)) {
    if (credentialsRoot === undefined) throw new BoundsError(`parameter ${parameter}=${path} cannot be used: no --credentials-root is set here`);
    real[parameter] = await checkCredentialFile(path, credentialsRoot, parameter);
  }
  try {
    return readEtcdSecurity({ caFile: real.ca, certFile: real.cert, keyFile: real.key, user: security.user, passwordFile: real.passwordFile }, parameterNames);
  } catch (error) {
    if (error instanceof EtcdSecurityError) throw new BoundsError(error.message, false, { cause: error });
    throw error;
  }
}

/**
 * The etcd client of a source or sink, made once its URI's credential files passed
 * {@link loadEtcdUriSecurity}: nothing is read before the first call. Without security
 * files the client is made at once. A failed load is tried again at the next call.
 */
export class LazyEtcdClient {
  private client: Etcd3 | undefined;
  private opening: Promise<Etcd3> | undefined;
  private closed = false;

  constructor(
    private readonly options: { readonly endpoints: readonly string[]; readonly callTimeoutMs: number; readonly security: EtcdUriSecurity; readonly credentialsRoot: string | undefined; readonly receiveBytesMax?: number },
  ) {
    if (options.security === undefined) this.client = createEtcdClient({ endpoints: options.endpoints, callTimeoutMs: options.callTimeoutMs, receiveBytesMax: options.receiveBytesMax });
  }

  /** The client; rejects with a {@link BoundsError} when a credential file cannot be used. */
  async get(): Promise<Etcd3> {
    if (this.closed) throw new Error('the etcd client is closed');
    if (this.client !== undefined) return this.client;
    this.opening ??= loadEtcdUriSecurity(this.options.security, this.options.credentialsRoot).then(
      (security) => {
        const client = createEtcdClient({ endpoints: this.options.endpoints, callTimeoutMs: this.options.callTimeoutMs, security, receiveBytesMax: this.options.receiveBytesMax });
        if (this.closed) {
          client.close();
          throw new Error('the etcd client is closed');
        }
        this.client = client;
        return client;
      },
      (error: unknown) => {
        this.opening = undefined;
        throw error;
      },
    );
    return this.opening;
  }

  close(): void {
    this.closed = true;
    this.client?.close();
  }
}

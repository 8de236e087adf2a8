/**
 * The one place where files turn into an {@link EtcdSecurity}: the metadata etcd's flags
 * (`--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user`, `--etcd-password-file`) and
 * the `ca`, `cert`, `key`, `user`, `passwordFile` parameters of etcd source and sink
 * URIs (after `src/pipeline/etcd-uri-security.ts` checked the files lie under
 * `--credentials-root`). Every file is read and checked here, so a wrong one fails with
 * a message naming its option instead of at the first handshake; no message holds the
 * password.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { connect as connectTls } from 'node:tls';
import type { EtcdSecurity } from '../cluster/etcd-client.ts';
import { readPasswordFileSync } from './password-file.ts';
import { readCaFile } from './tls-files.ts';

/** Where an etcd's CA, client certificate and key, user and password file are. */
export interface EtcdSecurityFiles {
  /** With it, TLS: the CA of the etcd server's certificate. */
  readonly caFile?: string | undefined;
  /** Client certificate and key (both or neither; need `caFile`). */
  readonly certFile?: string | undefined;
  readonly keyFile?: string | undefined;
  /** User and password file (both or neither). */
  readonly user?: string | undefined;
  readonly passwordFile?: string | undefined;
}

/** What each file is called in messages: a flag (`--etcd-ca`) or a URI parameter (`parameter ca`). */
export interface EtcdSecurityNames {
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
  readonly passwordFile: string;
}

/** The flags of the metadata etcd. */
export const metadataEtcdFlagNames: EtcdSecurityNames = { ca: '--etcd-ca', cert: '--etcd-cert', key: '--etcd-key', passwordFile: '--etcd-password-file' };

/** An etcd TLS or password file that cannot be used; the message names the option and the file. */
export class EtcdSecurityError extends Error {
  override readonly name = 'EtcdSecurityError';
  readonly retryable = false;
}

/** The metadata etcd settings of a server config (also what `spanfeed verify` parses). */
export interface MetadataEtcdSettings {
  readonly etcdTls: { readonly caFile: string; readonly certFile: string | undefined; readonly keyFile: string | undefined } | undefined;
  readonly etcdUser: string | undefined;
  readonly etcdPasswordFile: string | undefined;
}

/**
 * The security of the metadata etcd from a config: undefined when it sets none (plain
 * http, no auth). Throws an {@link EtcdSecurityError} naming the flag of a bad file.
 */
export function metadataEtcdSecurity(config: MetadataEtcdSettings): EtcdSecurity | undefined {
  return readEtcdSecurity(
    { caFile: config.etcdTls?.caFile, certFile: config.etcdTls?.certFile, keyFile: config.etcdTls?.keyFile, user: config.etcdUser, passwordFile: config.etcdPasswordFile },
    metadataEtcdFlagNames,
  );
}

/**
 * Reads and checks the files: the CA and the client certificate are PEM certificates
 * valid now, the key is the certificate's, the password file's first line is not empty.
 * Undefined when no file is given. The pairing rules (cert with key, user with password
 * file, cert needs a CA) are the callers' parsers'; they are checked here again.
 */
export function readEtcdSecurity(files: EtcdSecurityFiles, names: EtcdSecurityNames, now = new Date()): EtcdSecurity | undefined {
  if ((files.certFile === undefined) !== (files.keyFile === undefined)) throw new EtcdSecurityError(`${names.cert} and ${names.key} go together`);
  if (files.certFile !== undefined && files.caFile === undefined) throw new EtcdSecurityError(`${names.cert} needs ${names.ca}`);
  if ((files.user === undefined) !== (files.passwordFile === undefined)) throw new EtcdSecurityError(`a user and ${names.passwordFile} go together`);
  try {
    const tls = files.caFile === undefined ? undefined : { ca: readCaFile(names.ca, files.caFile, now), ...clientCertificate(files, names, now) };
    const auth = files.user === undefined || files.passwordFile === undefined ? undefined : { user: files.user, password: readPasswordFileSync(names.passwordFile, files.passwordFile) };
    if (tls === undefined && auth === undefined) return undefined;
    return { ...(tls === undefined ? {} : { tls }), ...(auth === undefined ? {} : { auth }) };
  } catch (error) {
    if (error instanceof EtcdSecurityError) throw error;
    throw new EtcdSecurityError((error as Error).message, { cause: error });
  }
}

/** The client certificate and key, checked to belong together (and valid now). */
function clientCertificate(files: EtcdSecurityFiles, names: EtcdSecurityNames, now: Date): { cert?: Buffer; key?: Buffer } {
  if (files.certFile === undefined || files.keyFile === undefined) return {};
  const cert = readCaFile(names.cert, files.certFile, now);
  let keyPem: Buffer;
  try {
    keyPem = readFileSync(files.keyFile);
  } catch (error) {
    throw new EtcdSecurityError(`${names.key} ${files.keyFile} cannot be read: ${(error as Error).message}`);
  }
  let key;
  try {
    key = createPrivateKey(keyPem);
  } catch (error) {
    throw new EtcdSecurityError(`${names.key} ${files.keyFile} is not a PEM private key: ${(error as Error).message}`);
  }
  if (!new X509Certificate(cert).checkPrivateKey(key)) throw new EtcdSecurityError(`${names.key} ${files.keyFile} is not the key of ${names.cert} ${files.certFile}`);
  return { cert, key: keyPem };
}

/**
 * Why a TLS handshake with `endpoint` (`host:port`) fails with `tls`, or undefined when
 * it succeeds (or does not finish within `timeoutMs`). gRPC reports a refused handshake
 * only as "No connection established": this says which certificate check failed.
 */
export async function tlsHandshakeProblem(endpoint: string, tls: NonNullable<EtcdSecurity['tls']>, timeoutMs = 2_000): Promise<string | undefined> {
  const match = /^(.*):(\d+)$/.exec(endpoint);
  if (match === null) return undefined;
  const host = (match[1] as string).replace(/^\[|\]$/g, '');
  return new Promise((resolve) => {
    const socket = connectTls({
      host,
      port: Number(match[2]),
      ca: tls.ca,
      ...(tls.cert === undefined || tls.key === undefined ? {} : { cert: tls.cert, key: tls.key }),
      ...(isIP(host) === 0 ? { servername: host } : {}),
      ALPNProtocols: ['h2'],
    });
    const done = (problem: string | undefined): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(problem);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    socket.once('secureConnect', () => done(undefined));
    socket.once('error', (error: Error) => done(`TLS handshake with etcd ${endpoint} failed: ${error.message}`));
  });
}

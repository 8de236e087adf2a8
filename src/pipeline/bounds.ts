/**
 * Where sources and sinks may reach: the bounds a capture puts on a changefeed's URIs.
 *
 * - The file sink writes only under `--file-sink-root`. The check resolves the root's
 *   realpath and the realpath of the deepest existing ancestor of the sink directory, so
 *   a symlink inside the root pointing out of it does not escape; `/proc`, `/sys` and
 *   `/dev` are refused whatever the root; `.` and `..` segments are refused when the URI
 *   is parsed (`parseFileSinkUri`), and a table name never becomes more than one path
 *   segment ({@link tableNameProblem}).
 * - A source or sink that is the cluster's own metadata etcd (an endpoint in common, or
 *   the same etcd cluster id) may not read or write keys under {@link metadataPrefix}.
 * - With `--allowed-endpoints`, etcd and PostgreSQL sources and sinks may reach only the
 *   hosts it lists.
 * - Files a URI names (etcd `ca`, `cert`, `key`, `passwordFile`; postgres `passwordFile`)
 *   must be regular files under `--credentials-root`, checked like the file sink's
 *   directory ({@link checkCredentialFile}): a URI cannot make a capture read, and send
 *   to a host of the URI's choosing, any other file it can read.
 *
 * The checks run when a changefeed is created or updated (a {@link BoundsError} is a 400
 * there) and again when a capture opens the changefeed's source and sink (see
 * `registry.ts`): a changefeed stored before, or written into etcd by hand, fails with
 * the reason instead of escaping.
 */
import { lstat, mkdir, realpath, stat } from 'node:fs/promises';
import { BlockList, isIP } from 'node:net';
import { basename, dirname, isAbsolute, join, resolve, sep } from 'node:path';
import type { Etcd3 } from 'etcd3';
import { prefixEnd } from '../core/span.ts';
import type { EtcdSecurity } from '../cluster/etcd-client.ts';
import { createEtcdClient } from '../cluster/etcd-client.ts';
import { redactUri } from './redact.ts';

/** Every cluster's metadata lives under this etcd prefix (`src/cluster/keys.ts`). */
export const metadataPrefix = '/spanfeed/';

/** Kernel and device trees no sink may write into, whatever the root. */
export const forbiddenTrees = ['/proc', '/sys', '/dev'] as const;

/** A source or sink outside the bounds; `retryable` only when the check itself could not run. */
export class BoundsError extends Error {
  override readonly name = 'BoundsError';

  constructor(
    message: string,
    readonly retryable = false,
    options: { readonly cause?: unknown } = {},
  ) {
    super(message, options);
  }
}

/** The cluster's own etcd, as the bounds compare it with a source's or sink's. */
export interface MetadataEtcd {
  readonly endpoints: readonly string[];
  /** The etcd cluster id of the metadata etcd (`header.cluster_id`). */
  clusterId(): Promise<string>;
}

/** What a capture allows its sources and sinks. */
export interface PipelineBounds {
  /** Absolute: the file sink writes only under it. */
  readonly fileSinkRoot: string;
  /** Hosts etcd and PostgreSQL sources and sinks may reach; undefined: any. */
  readonly allowedEndpoints: AllowedEndpoints | undefined;
  readonly metadata: MetadataEtcd;
  /** Absolute: files a source or sink URI names (`ca`, `cert`, `key`, `passwordFile`) lie under it. */
  readonly credentialsRoot: string;
}

// ---- pure checks ----

/** True when `path` is `root` or inside it (both absolute and normalised). */
export function isUnder(path: string, root: string): boolean {
  if (root === sep) return path.startsWith(sep);
  return path === root || path.startsWith(root + sep);
}

/** Why `path` (absolute, normalised) is in a forbidden tree, or undefined. */
export function forbiddenTreeOf(path: string): string | undefined {
  return forbiddenTrees.find((tree) => isUnder(path, tree));
}

/**
 * Why a table name cannot be one directory name, or undefined: the file sink makes one
 * directory per table, so `/`, `\`, NUL, `.` and `..` would leave the sink directory.
 */
export function tableNameProblem(name: string): string | undefined {
  if (name === '') return 'a table name must not be empty';
  if (name === '.' || name === '..') return `table name ${JSON.stringify(name)} is not allowed`;
  if (/[/\\\u0000]/.test(name)) return `table name ${JSON.stringify(name)} must not contain "/", "\\" or NUL`;
  return undefined;
}

/** True when the key range [start, end) ('' end: no end) has a key starting with `prefix`. */
export function rangeTouchesPrefix(start: string, end: string, prefix: string): boolean {
  return start < prefixEnd(prefix) && (end === '' || end > prefix);
}

/**
 * True when a mirror writing `targetPrefix + key` for the keys of [start, end) writes a
 * key starting with `prefix`.
 */
export function mirrorTouchesPrefix(targetPrefix: string, start: string, end: string, prefix: string): boolean {
  if (targetPrefix.startsWith(prefix)) return start < end || end === '';
  if (!prefix.startsWith(targetPrefix)) return false;
  return rangeTouchesPrefix(start, end, prefix.slice(targetPrefix.length));
}

/** One entry of `--allowed-endpoints`: a host (any port), a `host:port`, a `*.domain` or a CIDR block. */
interface EndpointRule {
  readonly host?: string;
  readonly suffix?: string;
  readonly subnet?: BlockList;
  readonly port?: number;
}

/** A parsed `--allowed-endpoints` list. */
export interface AllowedEndpoints {
  readonly text: string;
  readonly rules: readonly EndpointRule[];
}

function normalHost(host: string): string {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  const lower = bare.toLowerCase();
  return lower === 'localhost' ? '127.0.0.1' : lower;
}

/**
 * Parses `host[:port]`, `[v6addr][:port]`, `*.domain[:port]` or `addr/bits` entries,
 * comma-separated; throws an Error naming the bad entry.
 */
export function parseAllowedEndpoints(text: string): AllowedEndpoints {
  const rules = text
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry !== '')
    .map((entry): EndpointRule => {
      const cidr = /^([0-9a-fA-F.:]+)\/(\d{1,3})$/.exec(entry);
      if (cidr !== null) {
        const family = isIP(cidr[1] as string);
        const bits = Number(cidr[2]);
        if (family === 0 || bits > (family === 4 ? 32 : 128)) throw new Error(`allowed endpoint ${JSON.stringify(entry)} is not a valid CIDR block`);
        const subnet = new BlockList();
        subnet.addSubnet(cidr[1] as string, bits, family === 4 ? 'ipv4' : 'ipv6');
        return { subnet };
      }
      const match = /^(\*\.[a-zA-Z0-9.-]+|[a-zA-Z0-9.-]+|\[[0-9a-fA-F:]+\])(?::(\d{1,5}))?$/.exec(entry);
      if (match === null || (match[2] !== undefined && Number(match[2]) > 65535)) {
        throw new Error(`allowed endpoint ${JSON.stringify(entry)} must be host, host:port, *.domain or a CIDR block`);
      }
      const host = match[1] as string;
      const port = match[2] === undefined ? {} : { port: Number(match[2]) };
      if (host.startsWith('*.')) return { suffix: host.slice(1).toLowerCase(), ...port };
      const normal = normalHost(host);
      // An address given bare is a one-address block: it matches however the URI spells it.
      if (isIP(normal) !== 0) {
        const subnet = new BlockList();
        subnet.addAddress(normal, isIP(normal) === 4 ? 'ipv4' : 'ipv6');
        return { subnet, ...port };
      }
      return { host: normal, ...port };
    });
  if (rules.length === 0) throw new Error('--allowed-endpoints must list at least one entry');
  return { text, rules };
}

/** True when `host:port` matches one rule. Names are compared as written (no DNS). */
export function endpointAllowed(allowed: AllowedEndpoints, host: string, port: number): boolean {
  const normal = normalHost(host);
  const family = isIP(normal);
  return allowed.rules.some((rule) => {
    if (rule.port !== undefined && rule.port !== port) return false;
    if (rule.subnet !== undefined) return family !== 0 && rule.subnet.check(normal, family === 4 ? 'ipv4' : 'ipv6');
    if (rule.suffix !== undefined) return normal.endsWith(rule.suffix);
    return rule.host === normal;
  });
}

/** Splits `host:port` or `[v6]:port`. */
export function splitEndpoint(endpoint: string, defaultPort: number): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(endpoint);
  if (match === null) return { host: endpoint, port: defaultPort };
  return { host: match[1] as string, port: match[2] === undefined ? defaultPort : Number(match[2]) };
}

/** Refuses endpoints outside `--allowed-endpoints` (no list: everything is allowed). */
export function checkEndpointsAllowed(allowed: AllowedEndpoints | undefined, endpoints: readonly { host: string; port: number }[], what: string): void {
  if (allowed === undefined) return;
  for (const { host, port } of endpoints) {
    if (!endpointAllowed(allowed, host, port)) throw new BoundsError(`${what} may not reach ${host}:${port}: it is not in --allowed-endpoints (${allowed.text})`);
  }
}

/** True when two endpoint lists share an endpoint (`localhost` is `127.0.0.1`). */
export function endpointsOverlap(a: readonly string[], b: readonly string[]): boolean {
  const norm = (e: string): string => {
    const { host, port } = splitEndpoint(e.replace(/^https?:\/\//, ''), 2379);
    return `${normalHost(host)}:${port}`;
  };
  const set = new Set(a.map(norm));
  return b.some((e) => set.has(norm(e)));
}

// ---- checks that read the file system or etcd ----

/** The root's realpath, creating the root when it is missing. */
export async function fileSinkRootReal(root: string): Promise<string> {
  try {
    await mkdir(root, { recursive: true });
    return await realpath(root);
  } catch (error) {
    throw new BoundsError(`--file-sink-root ${root} cannot be used: ${(error as Error).message}`, true, { cause: error });
  }
}

/**
 * `target` (absolute, normalised) with every existing part resolved: the realpath of its
 * deepest existing ancestor joined with the missing rest. Throws a {@link BoundsError}
 * (`what` names the path in it) when it is reached through a dangling symlink.
 */
async function resolveExisting(target: string, what: string): Promise<string> {
  const rest: string[] = [];
  let existing = target;
  for (;;) {
    try {
      return join(await realpath(existing), ...rest);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') throw new BoundsError(`${what} ${target} cannot be checked: ${(error as Error).message}`, true, { cause: error });
      // A symlink whose target is missing: mkdir would follow it wherever it points.
      const isLink = await lstat(existing).then((s) => s.isSymbolicLink(), () => false);
      if (isLink) throw new BoundsError(`${what} ${target} goes through the dangling symlink ${existing}`);
      if (dirname(existing) === existing) throw new BoundsError(`${what} ${target} has no existing ancestor`);
      rest.unshift(basename(existing));
      existing = dirname(existing);
    }
  }
}

/**
 * The realpath of `path` once it is known to stay under `rootReal` (a realpath): refuses
 * (a {@link BoundsError}) a relative path, one under /proc, /sys or /dev as written or
 * as resolved, one outside the root as resolved (a symlink inside the root pointing out
 * of it does not escape) and a dangling symlink on the way. `what` names the path in the
 * messages ("file sink directory"), `rootOption` the root ("--file-sink-root").
 */
export async function resolveUnderRoot(path: string, rootReal: string, what: string, rootOption: string): Promise<string> {
  if (!isAbsolute(path)) throw new BoundsError(`${what} ${JSON.stringify(path)} must be absolute`);
  const target = resolve(path);
  const tree = forbiddenTreeOf(target);
  if (tree !== undefined) throw new BoundsError(`${what} ${target} is under ${tree}, which is never allowed`);
  const resolved = await resolveExisting(target, what);
  const resolvedTree = forbiddenTreeOf(resolved);
  if (resolvedTree !== undefined) throw new BoundsError(`${what} ${target} resolves to ${resolved}, under ${resolvedTree}, which is never allowed`);
  if (!isUnder(resolved, rootReal)) {
    const via = resolved === target ? '' : ` (it resolves to ${resolved})`;
    throw new BoundsError(`${what} ${target} is outside ${rootOption} ${rootReal}${via}`);
  }
  return resolved;
}

/**
 * The directory the file sink at `dir` would write to, with every existing part
 * resolved; throws a {@link BoundsError} when it is not under `root` (after resolving
 * the root's own realpath), is under /proc, /sys or /dev, or is reached through a
 * dangling symlink.
 */
export async function checkFileSinkDir(dir: string, root: string): Promise<string> {
  if (!isAbsolute(dir)) throw new BoundsError(`file sink directory ${JSON.stringify(dir)} must be absolute`);
  return resolveUnderRoot(dir, await fileSinkRootReal(root), 'file sink directory', '--file-sink-root');
}

/**
 * The realpath of a credential file a source or sink URI names (`ca`, `cert`, `key`,
 * `passwordFile`), once it is known to be an existing regular file under
 * `--credentials-root` (see {@link resolveUnderRoot}); throws a {@link BoundsError}
 * naming the URI parameter. The root is not created: a missing root holds no file.
 */
export async function checkCredentialFile(path: string, root: string, parameter: string): Promise<string> {
  let rootReal: string;
  try {
    rootReal = await realpath(root);
  } catch (error) {
    throw new BoundsError(`parameter ${parameter}=${path} cannot be used: --credentials-root ${root} cannot be resolved: ${(error as Error).message}`, false, { cause: error });
  }
  const real = await resolveUnderRoot(path, rootReal, `parameter ${parameter}`, '--credentials-root');
  const stats = await stat(real).catch((error: unknown) => {
    throw new BoundsError(`parameter ${parameter}=${path} cannot be read: ${(error as Error).message}`, false, { cause: error });
  });
  if (!stats.isFile()) throw new BoundsError(`parameter ${parameter}=${path} is not a regular file`);
  return real;
}

/**
 * True when `endpoints` are the metadata etcd: an endpoint in common, or the same etcd
 * cluster id (asked with the source's or sink's own `security`). Throws a retryable {@link BoundsError} when either cannot be asked.
 */
export async function isMetadataEtcd(endpoints: readonly string[], metadata: MetadataEtcd, security?: EtcdSecurity): Promise<boolean> {
  if (endpointsOverlap(endpoints, metadata.endpoints)) return true;
  let client: Etcd3 | undefined;
  try {
    client = createEtcdClient({ endpoints, callTimeoutMs: 3_000, security });
    const [theirs, ours] = await Promise.all([client.maintenance.status().then((s) => s.header.cluster_id), metadata.clusterId()]);
    return theirs === ours;
  } catch (error) {
    throw new BoundsError(`cannot tell whether etcd ${endpoints.join(',')} is the cluster's own etcd: ${(error as Error).message}`, true, { cause: error });
  } finally {
    client?.close();
  }
}

/** The metadata etcd of a capture: its endpoints and, asked once, its cluster id. */
export function metadataEtcd(client: Etcd3, endpoints: readonly string[]): MetadataEtcd {
  let id: Promise<string> | undefined;
  return {
    endpoints,
    clusterId: () => {
      id ??= client.maintenance.status().then(
        (s) => s.header.cluster_id,
        (error: unknown) => {
          id = undefined;
          throw error;
        },
      );
      return id;
    },
  };
}

/** Refuses a source on the metadata etcd whose range reaches under /spanfeed/. */
export function checkSourceRange(uri: string, range: { table: string; start: string; end: string }): void {
  if (rangeTouchesPrefix(range.start, range.end, metadataPrefix)) {
    throw new BoundsError(`source ${redactUri(uri)} is the cluster's own etcd: table ${range.table} may not read keys under ${metadataPrefix}`);
  }
}

/** Refuses an etcd sink on the metadata etcd that would write under /spanfeed/. */
export function checkMirrorRange(uri: string, targetPrefix: string, range: { table: string; start: string; end: string }): void {
  if (mirrorTouchesPrefix(targetPrefix, range.start, range.end, metadataPrefix)) {
    throw new BoundsError(`sink ${redactUri(uri)} is the cluster's own etcd: table ${range.table} may not be written under ${metadataPrefix}`);
  }
}

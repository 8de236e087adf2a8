/**
 * Bearer tokens for the HTTP API: the token file, and who may do what.
 *
 * The token file (`--auth-token-file`) holds one `<token> <role>` a line; blank lines and
 * lines starting with `#` are skipped. Roles: `read` (GET requests) and `admin`
 * (everything). With a file configured, every `/api/v1/*` request and `/metrics` needs
 * `Authorization: Bearer <token>`, except the liveness probe `/api/v1/health`; the
 * dashboard page `/` is served to anyone (it holds no data; its API calls need a token).
 *
 * Tokens are kept only as SHA-256 hashes and compared with `timingSafeEqual` against
 * every known hash, so that neither the comparison nor the lookup tells by its timing
 * how much of a guess was right.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

import type { Role } from '../security/role.ts';
import { roles } from '../security/role.ts';

export type { Role };

/** The shortest token accepted: shorter ones can be guessed. */
export const tokenLengthMin = 16;
/** The longest token accepted (it travels in a header). */
export const tokenLengthMax = 512;
/** Bound on the tokens of one file. */
export const tokensMax = 10_000;

/** A token file that cannot be used, naming the file and the line. */
export class TokenFileError extends Error {
  override readonly name = 'TokenFileError';
  readonly retryable = false;
}

/** The tokens of one token file, by hash. */
export class TokenTable {
  private constructor(private readonly entries: readonly { readonly hash: Buffer; readonly role: Role }[]) {}

  /** How many tokens the file holds. */
  get size(): number {
    return this.entries.length;
  }

  /**
   * Parses a token file's text; throws a {@link TokenFileError} naming `fileName` and the
   * line for a malformed line, an unknown role, a short token, a duplicate, or no token.
   */
  static parse(text: string, fileName: string): TokenTable {
    const entries: { hash: Buffer; role: Role }[] = [];
    const seen = new Set<string>();
    const lines = text.split(/\r?\n/);
    for (const [index, raw] of lines.entries()) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      const where = `${fileName} line ${index + 1}`;
      const fields = line.split(/\s+/);
      if (fields.length !== 2) throw new TokenFileError(`${where}: expected "<token> <role>", got ${fields.length} fields`);
      const [token, role] = fields as [string, string];
      if (!(roles as readonly string[]).includes(role)) throw new TokenFileError(`${where}: unknown role ${JSON.stringify(role.slice(0, 40))}; use ${roles.join(' or ')}`);
      if (token.length < tokenLengthMin || token.length > tokenLengthMax) throw new TokenFileError(`${where}: a token must be ${tokenLengthMin} to ${tokenLengthMax} characters, got ${token.length}`);
      if (!/^[\x21-\x7e]+$/.test(token)) throw new TokenFileError(`${where}: a token must be printable ASCII without spaces`);
      const hash = hashToken(token);
      const key = hash.toString('hex');
      if (seen.has(key)) throw new TokenFileError(`${where}: the token is listed twice`);
      seen.add(key);
      if (entries.length >= tokensMax) throw new TokenFileError(`${where}: more than ${tokensMax} tokens`);
      entries.push({ hash, role: role as Role });
    }
    if (entries.length === 0) throw new TokenFileError(`${fileName}: holds no token (one "<token> <role>" a line)`);
    return new TokenTable(entries);
  }

  /** The role of `token`, or undefined for an unknown one; takes the same time either way. */
  roleOf(token: string): Role | undefined {
    const hash = hashToken(token);
    let found: Role | undefined;
    // Every entry is compared, so the time does not tell where (or whether) it matched.
    for (const entry of this.entries) {
      if (timingSafeEqual(entry.hash, hash) && found === undefined) found = entry.role;
    }
    return found;
  }
}

function hashToken(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** The answer to one request's credentials. */
export type AuthDecision =
  | { readonly allow: true; readonly role: Role | undefined }
  | { readonly allow: false; readonly status: 401 | 403; readonly code: string; readonly message: string };

/** Methods that change nothing; every other method needs the `admin` role. */
const readMethods: ReadonlySet<string> = new Set(['GET', 'HEAD']);

/** True for the methods that change state (everything but GET and HEAD). */
export function isMutating(method: string): boolean {
  return !readMethods.has(method.toUpperCase());
}

/** True for the paths that need a token when a token file is configured. */
export function needsToken(path: string): boolean {
  if (path === '/api/v1/health') return false;
  return path === '/metrics' || path === '/api/v1' || path.startsWith('/api/v1/');
}

/** What vouches for a caller besides a bearer token. */
export interface AuthOptions {
  /**
   * The caller's role from a verified client certificate (`--tls-client-roles`), or the
   * role a capture passed on when it forwarded the request (it checked the caller).
   */
  readonly vouchedRole?: Role | undefined;
  /** True when client certificates are configured: requests need credentials even without a token file. */
  readonly certificatesConfigured?: boolean;
}

/**
 * Whether a request may go on: `authorization` is its `Authorization` header (undefined
 * when absent); with no token file and no client certificates configured everything is
 * allowed. A vouched role counts before a token. An unknown or missing credential is a
 * 401; a `read` role on a mutating method is a 403.
 */
export function authorize(method: string, path: string, authorization: string | undefined, tokens: TokenTable | undefined, options: AuthOptions = {}): AuthDecision {
  if ((tokens === undefined && options.certificatesConfigured !== true) || !needsToken(path)) return { allow: true, role: undefined };
  let role = options.vouchedRole;
  if (role === undefined) {
    const token = bearerToken(authorization);
    if (token === undefined) {
      const needs = tokens === undefined ? 'a client certificate with a role (--tls-client-roles)' : '"Authorization: Bearer <token>"';
      return { allow: false, status: 401, code: 'unauthorized', message: `this endpoint needs ${needs}` };
    }
    role = tokens?.roleOf(token);
    if (role === undefined) return { allow: false, status: 401, code: 'unauthorized', message: 'the bearer token is not known' };
  }
  if (role === 'read' && isMutating(method)) {
    return { allow: false, status: 403, code: 'forbidden', message: `a read token may not ${method.toUpperCase()}; this needs an admin token` };
  }
  return { allow: true, role };
}

/** Parses a role a capture passed on (the `x-spanfeed-caller-role` header); undefined for anything else. */
export function parseRole(value: string | string[] | undefined): Role | undefined {
  return typeof value === 'string' && (roles as readonly string[]).includes(value) ? (value as Role) : undefined;
}

/** The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive). */
function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  const match = /^Bearer[ ]+([^\s]+)[ ]*$/i.exec(header);
  return match?.[1];
}

/** A refused request: status, code and message. */
export interface Refusal {
  readonly status: number;
  readonly code: string;
  readonly message: string;
}

/**
 * The checks that stop a browser on another site from changing anything, with or
 * without tokens: a mutating request must say `Content-Type: application/json` (a
 * cross-site page can send `text/plain` or a form without asking, but not JSON), and an
 * `Origin` header, when present, must be this server's own (`http(s)://` + the `Host`
 * header). Read requests pass: a cross-site page cannot read their answers.
 */
export function crossSiteRefusal(method: string, contentType: string | undefined, origin: string | undefined, host: string | undefined): Refusal | undefined {
  if (!isMutating(method)) return undefined;
  if (origin !== undefined && !isOwnOrigin(origin, host)) {
    return { status: 403, code: 'cross-origin', message: `requests from ${JSON.stringify(origin.slice(0, 200))} may not change anything here` };
  }
  const mediaType = (contentType ?? '').split(';')[0]?.trim().toLowerCase();
  if (mediaType !== 'application/json') {
    return { status: 415, code: 'unsupported-media-type', message: `${method.toUpperCase()} requests need "Content-Type: application/json", got ${JSON.stringify((contentType ?? '').slice(0, 100))}` };
  }
  return undefined;
}

function isOwnOrigin(origin: string, host: string | undefined): boolean {
  if (host === undefined || host === '') return false;
  const own = host.toLowerCase();
  const asked = origin.toLowerCase();
  return asked === `http://${own}` || asked === `https://${own}`;
}

/**
 * The token file a server runs with: read at start (a bad file is a {@link TokenFileError})
 * and read again on `reload()` (SIGHUP), where a bad file keeps the tokens in use.
 */
export class TokenFile {
  private current: TokenTable | undefined;

  constructor(
    readonly path: string,
    private readonly read: (path: string) => string,
  ) {}

  /** The tokens in use; undefined before `load()`. */
  get table(): TokenTable | undefined {
    return this.current;
  }

  /** Reads and parses the file; on any problem throws a {@link TokenFileError} and keeps the tokens in use. */
  load(): TokenTable {
    let text: string;
    try {
      text = this.read(this.path);
    } catch (error) {
      throw new TokenFileError(`cannot read ${this.path}: ${(error as Error).message}`, { cause: error });
    }
    const table = TokenTable.parse(text, this.path);
    this.current = table;
    return table;
  }
}

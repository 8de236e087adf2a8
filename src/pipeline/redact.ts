/**
 * Redaction of secrets in source and sink URIs: a password never leaves the process in an
 * API answer, a log line, an error message or the CLI's output. Pure string functions.
 *
 * What counts as a secret: the password of a URI's user info (`postgres://user:***@host`)
 * and the value of a query parameter whose name says it is one (`password`, `secret`,
 * `token`, ...). A `passwordFile` path is not a secret and is kept.
 */

/** What a redacted secret is shown as. */
export const redacted = '***';

/** Query parameter names whose values are secrets (compared lowercase). */
const secretParams = new Set(['password', 'passwd', 'pass', 'pwd', 'secret', 'token', 'apikey', 'api_key', 'sslpassword']);

/**
 * `scheme://user:password@` anywhere in a text: the user and the password stop at
 * whitespace, quotes and the characters that end a URI's authority; in a JSON text a
 * password may hold an escaped quote or backslash.
 */
const userInfoPattern = /([a-zA-Z][a-zA-Z0-9+.-]*:\/\/)([^\s/?#@:"'\\]*):((?:[^\s/?#@"'\\]|\\["\\])*)@/g;

/** `?password=...` or `&password=...` after a `scheme://` in a text. */
const queryPattern = /([?&])([a-zA-Z_]+)=([^\s&#"'\\]*)/g;

/** A source or sink URI with its password (and secret query parameters) replaced by `***`. */
export function redactUri(uri: string): string {
  return redactSecrets(uri);
}

/**
 * Any text (an error message, a log line, a JSON answer) with every URI password in it
 * replaced by `***`. Idempotent: a redacted text is unchanged by a second pass.
 */
export function redactSecrets(text: string): string {
  if (!text.includes('://')) return text;
  let out = text.replace(userInfoPattern, (_match, scheme: string, user: string, password: string) =>
    password === '' ? `${scheme}${user}:@` : `${scheme}${user}:${redacted}@`,
  );
  if (/[?&][a-zA-Z_]+=/.test(out)) {
    out = out.replace(queryPattern, (match, sep: string, name: string, value: string) =>
      secretParams.has(name.toLowerCase()) && value !== '' ? `${sep}${name}=${redacted}` : match,
    );
  }
  return out;
}

/** True when `uri` holds a secret that {@link redactUri} hides. */
export function hasSecret(uri: string): boolean {
  return redactUri(uri) !== uri;
}

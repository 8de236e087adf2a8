/**
 * Parsing of source and sink URIs, with clear errors for the API.
 */

/** A URI the user gave that cannot be used. */
export class BadUriError extends Error {
  override readonly name = 'BadUriError';
  readonly retryable = false;
}

/** Parses `uri`, requiring one of `schemes` (without the colon). */
export function parseUri(uri: string, schemes: readonly string[], what: string): URL {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new BadUriError(`${what} uri ${JSON.stringify(uri)} is not a valid URI`);
  }
  const scheme = url.protocol.replace(/:$/, '');
  if (!schemes.includes(scheme)) throw new BadUriError(`${what} uri scheme "${scheme}" is not supported (use ${schemes.map((s) => `${s}://`).join(', ')})`);
  return url;
}

/** An integer query parameter within [min, max], or the default. */
export function intParam(url: URL, name: string, fallback: number, min: number, max: number): number {
  const raw = url.searchParams.get(name);
  if (raw === null) return fallback;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new BadUriError(`parameter ${name}=${JSON.stringify(raw)} must be an integer from ${min} to ${max}`);
  }
  return value;
}

/**
 * Parsing of source and sink URIs, with clear errors for the API.
 */
import { redactSecrets } from './redact.ts';

/** A URI the user gave that cannot be used. Its message never holds the URI's password. */
export class BadUriError extends Error {
  override readonly name = 'BadUriError';
  readonly retryable = false;

  constructor(message: string) {
    super(redactSecrets(message));
  }
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

/**
 * Parses a URI whose authority lists several hosts (`etcd://h1:2379,h2:2379/...`), which
 * a WHATWG URL refuses (the port would run into the next host): the URL is parsed with
 * the first host only, for its user info, path and parameters; `hosts` is the list as
 * written.
 */
export function parseMultiHostUri(uri: string, scheme: string, what: string): { url: URL; hosts: string } {
  const match = new RegExp(`^${scheme}://([^/?#]*)(.*)$`, 's').exec(uri);
  if (match === null) return { url: parseUri(uri, [scheme], what), hosts: '' };
  const hosts = match[1] as string;
  return { url: parseUri(`${scheme}://${hosts.split(',')[0] ?? ''}${match[2] as string}`, [scheme], what), hosts };
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

/** An optional decimal query parameter (`12`, `0.5`) within [min, max], or undefined when absent. */
export function optionalNumberParam(url: URL, name: string, min: number, max: number): number | undefined {
  const raw = url.searchParams.get(name);
  if (raw === null) return undefined;
  const value = Number(raw);
  if (!/^\d+(\.\d+)?$/.test(raw) || !Number.isFinite(value) || value < min || value > max) {
    throw new BadUriError(`parameter ${name}=${JSON.stringify(raw)} must be a number from ${min} to ${max}`);
  }
  return value;
}

/** An optional integer query parameter within [min, max], or undefined when absent. */
export function optionalIntParam(url: URL, name: string, min: number, max: number): number | undefined {
  return url.searchParams.has(name) ? intParam(url, name, min, min, max) : undefined;
}

/**
 * Refuses query parameters not in `known` (and any given twice): a misspelt option
 * would otherwise be ignored without a word, e.g. a retention setting that never applies.
 */
export function rejectUnknownParams(url: URL, known: readonly string[], what: string): void {
  const seen = new Set<string>();
  for (const name of url.searchParams.keys()) {
    if (!known.includes(name)) throw new BadUriError(`${what} uri parameter ${JSON.stringify(name)} is not known (known: ${known.join(', ')})`);
    if (seen.has(name)) throw new BadUriError(`${what} uri parameter ${JSON.stringify(name)} is given more than once`);
    seen.add(name);
  }
}

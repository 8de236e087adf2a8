/**
 * One HTTP(S) request to a capture's API, with the TLS options fetch does not take (a
 * private CA, a client certificate, our own server-name check): used by captures
 * forwarding to the owner, by `spanfeed cli` and by the test harness. The answer's body
 * is a stream, so an event stream can be relayed as it comes.
 */
import { request as httpRequest } from 'node:http';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { PeerCertificate } from 'node:tls';

/** TLS of the client side: the CA to trust, and a certificate to show when there is one. */
export interface ApiClientTls {
  readonly ca: Buffer;
  readonly cert?: Buffer | undefined;
  readonly key?: Buffer | undefined;
  readonly checkServerIdentity?: ((host: string, cert: PeerCertificate) => Error | undefined) | undefined;
}

export interface ApiRequestOptions {
  readonly method: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly body?: string | Buffer | undefined;
  /** For https URLs; without it the system's CAs are trusted. */
  readonly tls?: ApiClientTls | undefined;
  /** Aborts the request and its answer's body. */
  readonly signal?: AbortSignal | undefined;
  /** Deadline of the answer's headers. */
  readonly timeoutMs: number;
}

export interface ApiAnswerStream {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: IncomingMessage;
}

/** Sends the request; resolves once the answer's headers are in. */
export function apiRequest(url: string, options: ApiRequestOptions): Promise<ApiAnswerStream> {
  const target = new URL(url);
  const secure = target.protocol === 'https:';
  if (!secure && target.protocol !== 'http:') return Promise.reject(new Error(`${url} is not an http:// or https:// URL`));
  return new Promise((resolve, reject) => {
    const tls = options.tls;
    const common = { method: options.method, headers: { ...options.headers }, signal: options.signal };
    const req = secure
      ? httpsRequest(target, {
          ...common,
          ...(tls === undefined ? {} : { ca: tls.ca, cert: tls.cert, key: tls.key }),
          ...(tls?.checkServerIdentity === undefined ? {} : { checkServerIdentity: tls.checkServerIdentity }),
          // A pooled socket keeps the certificate checks of its first request; none kept.
          agent: false,
        })
      : httpRequest(target, { ...common, agent: false });
    const timer = setTimeout(() => req.destroy(new Error(`no answer within ${options.timeoutMs} ms`)), options.timeoutMs);
    req.once('response', (res) => {
      clearTimeout(timer);
      resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res });
    });
    req.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    req.end(options.body);
  });
}

/** Reads a whole answer body as text, at most `bytesMax` bytes. */
export async function readText(body: IncomingMessage, bytesMax = 16 * 1_048_576): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > bytesMax) {
      body.destroy();
      throw new Error(`the answer is larger than ${bytesMax} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

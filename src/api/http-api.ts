/**
 * The HTTP API, served by every capture. JSON in and out, timestamps as decimal strings.
 * `health` and `status` answer locally; everything else is answered by the owner, and a
 * non-owner forwards the request to it. Bad input gets 400/404/409 with
 * `{"error": {"code", "message"}}` and changes nothing.
 *
 * Before any route runs: the bearer token when a token file is configured (401/403, see
 * `auth.ts`), then, for mutating requests, the cross-site checks (403 for a foreign
 * `Origin`, 415 for a body that is not declared JSON). A forwarded request carries the
 * caller's `Authorization` header, and the owner checks it again.
 */
import { readFileSync } from 'node:fs';
import { GRPCCancelledError, GRPCDeadlineExceededError, GRPCUnavailableError } from 'etcd3';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { RequestResult } from '../core/coordinator.ts';
import { spanKey } from '../core/span.ts';
import { assertNever } from '../core/assert.ts';
import { describeStall } from '../core/stall-detector.ts';
import { describeReason } from '../core/watermark.ts';
import type { Watermark } from '../core/watermark.ts';
import type { BackfillRecord } from '../pipeline/backfill.ts';
import { backfillTiming } from '../pipeline/backfill.ts';
import { BackfillProgressCache, backfillProgressDefaults } from './backfill-progress.ts';
import type { BackfillProgressLimits } from './backfill-progress.ts';
import { encodeSpanCursor, parseSpansPageQuery, spansPageDefaults } from './span-pages.ts';
import type { SpansPageLimits } from './span-pages.ts';
import { noPrimary } from '../core/span-summary.ts';
import type { ReplicationSet } from '../core/replication-set.ts';
import type { Capture } from '../server/capture.ts';
import { redactSecrets } from '../pipeline/redact.ts';
import type { ChangefeedInfo, ChangefeedStatus } from '../server/changefeed-info.ts';
import { ValidationError, changefeedLimits } from '../server/changefeed-info.ts';
import { ChangefeedService, ServiceError } from '../server/changefeed-service.ts';
import type { ServiceErrorKind } from '../server/changefeed-service.ts';
import type { DrainResult, OwnerRole, SpanOperationRefusal } from '../server/owner-role.ts';
import type { SpanOperationView } from '../core/span-operation.ts';
import { authorize, crossSiteRefusal, parseRole } from './auth.ts';
import type { AuthOptions, Role, TokenFile } from './auth.ts';
import { apiRequest } from './api-request.ts';
import type { ApiAnswerStream } from './api-request.ts';
import { verifiedPeerCertificate } from '../security/capture-tls.ts';
import { compileRequestSchemas, operationKey } from './request-schemas.ts';
import type { RequestSchema } from './request-schemas.ts';

let openApi: unknown;
let dashboard: string | undefined;

/** The dashboard (`src/api/dashboard.html`): one static page that polls this API. */
function dashboardPage(): string {
  dashboard ??= readFileSync(new URL('./dashboard.html', import.meta.url), 'utf8');
  return dashboard;
}

/** The OpenAPI document of this API (`api/openapi.json`), read once. */
export function openApiDocument(): unknown {
  openApi ??= JSON.parse(readFileSync(new URL('../../api/openapi.json', import.meta.url), 'utf8'));
  return openApi;
}

/** Bound on request bodies. */
export const bodyBytesMax = 1_048_576;

/**
 * Bounds on what is read and thrown away after a body was refused as too large, before
 * the connection is closed: closing a socket with unread bytes resets it, and the client
 * may then lose the 413 that was already sent. Past either bound the socket is closed
 * anyway.
 */
export const refusedBodyDrainBytesMax = 64 * 1_048_576;
export const refusedBodyDrainMs = 10_000;

/** How long a forwarded request waits for the owner's answer headers (an event stream then goes on). */
export const forwardAnswerTimeoutMs = 10_000;

/** How many of the slowest spans a changefeed's view names. */
export const slowestSpansInView = 3;

/** The header a capture passes a caller's role on in, when it forwards a request to the owner over TLS. */
export const callerRoleHeader = 'x-spanfeed-caller-role';

/** A header's value as one string (the first of a repeated one). */
function headerText(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** An error answered with a status and a code. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    /** Extra answer headers (`WWW-Authenticate` on a 401). */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
  }
}

/** What the API is built with besides the capture. */
export interface HttpApiOptions {
  /** The token file; undefined: no tokens are asked for. */
  readonly tokens?: TokenFile | undefined;
  /** Bounds of `GET /spans` pages. */
  readonly spansPage?: SpansPageLimits;
  /** How old the backfill progress shown may be, and the etcd page size reading it. */
  readonly backfillProgress?: BackfillProgressLimits;
}

type Handler = (request: ApiRequest) => Promise<ApiResponse>;

interface ApiRequest {
  readonly method: string;
  readonly params: readonly string[];
  readonly body: unknown;
  readonly query: URLSearchParams;
}

interface ApiResponse {
  readonly status: number;
  readonly body: unknown;
}

interface Route {
  readonly method: string;
  readonly pattern: RegExp;
  readonly local: boolean;
  readonly handler: Handler;
  /** The OpenAPI request-body schema, when the operation takes a body. */
  readonly schema: RequestSchema | undefined;
}

/** The client went away before its request was read: there is no one to answer. */
class ClientGoneError extends Error {
  override readonly name = 'ClientGoneError';
  readonly retryable = false;
}

const segment = '([^/]+)';

/** The HTTP status of each kind of refused lifecycle request. */
const serviceErrorStatus: Record<ServiceErrorKind, number> = { invalid: 400, 'not-found': 404, conflict: 409, unavailable: 503 };

export class HttpApi {
  private server: Server | undefined;
  private readonly routes: Route[];

  private readonly service: ChangefeedService;
  private readonly backfill: BackfillProgressCache;

  constructor(
    private readonly capture: Capture,
    private readonly options: HttpApiOptions = {},
  ) {
    this.backfill = new BackfillProgressCache(() => capture.client, (id) => capture.keys.backfillPrefix(id), options.backfillProgress ?? backfillProgressDefaults);
    this.service = new ChangefeedService({ cache: capture.changefeedCache, client: capture.client, keys: capture.keys, owner: () => this.owner(), bounds: capture.bounds });
    // Compiled once here: a document without a schema for a body fails the start, not a request.
    const schemas = compileRequestSchemas(openApiDocument());
    const r = (method: string, path: string, handler: Handler, local = false): Route => ({
      method,
      pattern: new RegExp(`^${path.replaceAll('{}', segment)}$`),
      local,
      handler,
      schema: schemas.get(operationKey(method, path)),
    });
    this.routes = [
      r('GET', '/api/v1/health', async () => this.health(), true),
      r('GET', '/api/v1/status', async () => this.status(), true),
      r('GET', '/api/v1/openapi.json', async () => ({ status: 200, body: openApiDocument() }), true),
      r('GET', '/', async () => ({ status: 200, body: new RawBody(dashboardPage(), 'text/html; charset=utf-8') }), true),
      r('GET', '/metrics', async () => ({ status: 200, body: new RawBody(await this.capture.metrics.registry.metrics(), this.capture.metrics.registry.contentType) }), true),
      r('GET', '/api/v1/captures', async () => this.listCaptures()),
      r('POST', '/api/v1/captures/{}/drain', async (q) => this.drain(q.params[0] as string)),
      r('DELETE', '/api/v1/captures/{}/drain', async (q) => this.undrain(q.params[0] as string)),
      r('POST', '/api/v1/owner/resign', async () => this.resign()),
      r('GET', '/api/v1/changefeeds', async () => this.listChangefeeds()),
      r('POST', '/api/v1/changefeeds', async (q) => ({ status: 201, body: this.describe(await this.service.create(q.body)) })),
      r('GET', '/api/v1/changefeeds/{}', async (q) => this.getChangefeed(q.params[0])),
      r('PUT', '/api/v1/changefeeds/{}', async (q) => ({ status: 200, body: this.describe(await this.service.update(q.params[0], q.body)) })),
      r('DELETE', '/api/v1/changefeeds/{}', async (q) => ({ status: 200, body: { removed: await this.service.remove(q.params[0]) } })),
      r('POST', '/api/v1/changefeeds/{}/pause', async (q) => ({ status: 202, body: this.describe(await this.service.pause(q.params[0], q.body)) })),
      r('POST', '/api/v1/changefeeds/{}/resume', async (q) => ({ status: 202, body: this.describe(await this.service.resume(q.params[0], q.body)) })),
      r('GET', '/api/v1/changefeeds/{}/spans', async (q) => this.listSpans(q.params[0], q.query)),
      r('GET', '/api/v1/changefeeds/{}/spans/summary', async (q) => this.spansSummary(q.params[0])),
      r('GET', '/api/v1/changefeeds/{}/spans/slowest', async (q) => this.slowestSpans(q.params[0], q.query)),
      r('GET', '/api/v1/changefeeds/{}/watermark/stream', async (q) => {
        // Looked up before the 200 is sent, so that an unknown changefeed is a 404.
        const info = this.findChangefeed(q.params[0]);
        return { status: 200, body: new EventStream((signal) => this.watermarkEvents(info.id, signal)) };
      }),
      r('POST', '/api/v1/changefeeds/{}/spans/move', async (q) => this.moveSpan(q.params[0], q.body)),
      r('POST', '/api/v1/changefeeds/{}/spans/split', async (q) => this.splitSpan(q.params[0], q.body)),
      r('POST', '/api/v1/changefeeds/{}/spans/merge', async (q) => this.mergeSpans(q.params[0], q.body)),
      r('POST', '/api/v1/changefeeds/{}/rebalance', async (q) => this.rebalance(q.params[0])),
    ];
  }

  async listen(host: string, port: number): Promise<number> {
    const tls = this.capture.tls;
    const handle = (req: IncomingMessage, res: ServerResponse): void => {
      this.serve(req, res).catch((error: unknown) => {
        // Only sending an answer can get here; the answer is lost, the process is not.
        this.capture.log.error({ err: error }, 'api answer failed');
        res.destroy();
      });
    };
    // With TLS a client certificate is asked for but not required: operators may use
    // tokens, and captures forwarding a request show theirs.
    const server =
      tls === undefined
        ? createServer(handle)
        : createHttpsServer({ ca: tls.material.ca, cert: tls.material.cert, key: tls.material.key, requestCert: true, rejectUnauthorized: false }, handle);
    server.requestTimeout = 30_000;
    server.headersTimeout = 10_000;
    // Requests Node cannot parse get a JSON answer too, instead of its bare 400.
    server.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => answerClientError(error, socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('http server has no port');
    return address.port;
  }

  async close(): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  // ---- plumbing ----

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const url = requestUrl(req.url);
      const method = req.method ?? 'GET';
      const decision = authorize(method, url.pathname, req.headers.authorization, this.options.tokens?.table, this.vouch(req));
      if (!decision.allow) {
        const challenge = decision.status === 401 ? { 'www-authenticate': 'Bearer realm="spanfeed"' } : {};
        throw new ApiError(decision.status, decision.code, decision.message, challenge);
      }
      const candidates = this.routes.filter((route) => route.pattern.test(url.pathname));
      if (candidates.length === 0) throw new ApiError(404, 'not-found', `no such endpoint ${url.pathname}`);
      const route = candidates.find((c) => c.method === method);
      if (route === undefined) throw new ApiError(405, 'method-not-allowed', `${method} is not allowed on ${url.pathname}; use ${candidates.map((c) => c.method).join(' or ')}`);
      const crossSite = crossSiteRefusal(method, req.headers['content-type'], req.headers.origin, req.headers.host);
      if (crossSite !== undefined) throw new ApiError(crossSite.status, crossSite.code, crossSite.message);
      const params = (route.pattern.exec(url.pathname) ?? []).slice(1).map(decodePathSegment);
      const raw = await readBody(req);
      if (!route.local && !this.capture.isOwner) {
        await this.forward(req, res, url, raw, decision.role);
        return;
      }
      let body: unknown;
      if (raw.length > 0) {
        try {
          body = JSON.parse(raw.toString('utf8'));
        } catch {
          throw new ApiError(400, 'bad-json', 'the request body is not valid JSON');
        }
      }
      checkBody(route.schema, body);
      const response = await route.handler({ method, params, body, query: url.searchParams });
      if (response.body instanceof EventStream) {
        await streamEvents(res, response.body, this.capture.metrics.apiEventStreams);
        return;
      }
      send(res, response.status, response.body);
    } catch (error) {
      if (error instanceof ClientGoneError) return;
      if (error instanceof BodyTooLargeError) refuseBody(req, res, error);
      else if (error instanceof ApiError) send(res, error.status, { error: { code: error.code, message: error.message } }, error.headers);
      else if (error instanceof ServiceError) send(res, serviceErrorStatus[error.kind], { error: { code: error.code, message: error.message } });
      else if (error instanceof ValidationError) send(res, 400, { error: { code: 'invalid', message: error.message } });
      else if (isEtcdUnavailable(error)) {
        // etcd is changing leaders or unreachable: retry. A write may have landed before
        // the error; every write is compare-and-set, so a retry cannot apply it twice.
        this.capture.log.warn({ err: error }, 'api request met an etcd error');
        send(res, 503, { error: { code: 'etcd-unavailable', message: `etcd did not answer (${(error as Error).message}); read the changefeed again and retry` } });
      } else {
        this.capture.log.error({ err: error }, 'api request failed');
        send(res, 500, { error: { code: 'internal', message: (error as Error).message } });
      }
    }
  }

  /**
   * Who vouches for the caller besides a token: its client certificate's role, or, from
   * a capture (its certificate name allowed), the role it passed on when forwarding.
   */
  private vouch(req: IncomingMessage): AuthOptions {
    const tls = this.capture.tls;
    if (tls === undefined) return {};
    const cert = verifiedPeerCertificate(req.socket);
    const certificatesConfigured = tls.clientRoles !== undefined;
    const role = tls.roleOf(cert);
    if (role !== undefined) return { vouchedRole: role, certificatesConfigured };
    if (tls.isCapture(cert)) return { vouchedRole: parseRole(req.headers[callerRoleHeader]), certificatesConfigured };
    return { certificatesConfigured };
  }

  /**
   * Sends a request on to the owner and relays its answer. The caller's role travels
   * with it (the owner trusts it only over TLS, from a capture's certificate), and so
   * does its token, for an owner without TLS to check again.
   */
  private async forward(req: IncomingMessage, res: ServerResponse, url: URL, body: Buffer, role: Role | undefined): Promise<void> {
    const owner = this.capture.owner;
    const record = owner === undefined ? undefined : this.capture.captures.get(owner.captureId);
    if (record === undefined || record.id === this.capture.id) throw new ApiError(503, 'no-owner', 'no owner is elected yet; retry shortly');
    // The timeout covers the answer's headers only: an event stream may then go on.
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), forwardAnswerTimeoutMs);
    // The response closes when the client goes away (the request closed already, once its
    // body was read): the owner's side, an event stream above all, must stop with it.
    res.on('close', () => abort.abort());
    const method = req.method ?? 'GET';
    // The owner checks the caller's token again (captures should share one token file).
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (req.headers.authorization !== undefined) headers.authorization = req.headers.authorization;
    const tls = this.capture.tls;
    if (tls !== undefined && role !== undefined) headers[callerRoleHeader] = role;
    let answer: ApiAnswerStream;
    try {
      answer = await apiRequest(`${tls === undefined ? 'http' : 'https'}://${record.httpAddr}${url.pathname}${url.search}`, {
        method,
        headers,
        // The owner would ignore a body on GET and HEAD.
        body: body.length > 0 && method !== 'GET' && method !== 'HEAD' ? body : undefined,
        tls: tls?.clientOptions(),
        signal: abort.signal,
        timeoutMs: forwardAnswerTimeoutMs,
      });
    } catch (error) {
      throw new ApiError(503, 'owner-unreachable', `the owner ${record.id} at ${record.httpAddr} did not answer: ${(error as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
    if (res.destroyed) {
      // The client left while the owner answered.
      abort.abort();
      return;
    }
    const relayed: Record<string, string> = { 'content-type': headerText(answer.headers['content-type']) ?? 'application/json' };
    for (const name of ['cache-control', 'www-authenticate']) {
      const value = headerText(answer.headers[name]);
      if (value !== undefined) relayed[name] = value;
    }
    res.writeHead(answer.status, relayed);
    try {
      for await (const chunk of answer.body as AsyncIterable<Buffer>) {
        if (res.destroyed) break;
        res.write(chunk);
      }
    } catch {
      // The client or the owner went away mid-stream.
    } finally {
      abort.abort();
    }
    res.end();
  }

  private owner(): OwnerRole {
    const role = this.capture.ownerRole;
    if (role === undefined || !role.active) throw new ApiError(503, 'not-owner', 'this capture stopped being the owner; retry');
    return role;
  }

  // ---- handlers ----

  private health(): ApiResponse {
    const owner = this.capture.owner;
    if (owner === undefined) return { status: 503, body: { status: 'no-owner' } };
    return { status: 200, body: { status: 'ok', owner: owner.captureId } };
  }

  private status(): ApiResponse {
    return {
      status: 200,
      body: {
        id: this.capture.id,
        isOwner: this.capture.isOwner,
        version: this.capture.version,
        grpcAddr: this.capture.grpcAddr,
        httpAddr: this.capture.httpAddr,
        eventLoopDelay: this.capture.eventLoopDelay.current(),
      },
    };
  }

  private listCaptures(): ApiResponse {
    const owner = this.owner();
    const list = [...this.capture.captures.values()]
      .sort((a, b) => a.id.localeCompare(b.id))
      .map((c) => ({
        id: c.id,
        isOwner: c.id === owner.info.captureId,
        grpcAddr: c.grpcAddr,
        httpAddr: c.httpAddr,
        draining: owner.draining.has(c.id),
        spans: owner.remainingSpans(c.id),
      }));
    return { status: 200, body: list };
  }

  private async drain(captureId: string): Promise<ApiResponse> {
    return { status: 202, body: { remainingSpans: drainedSpans(await this.owner().drain(captureId)) } };
  }

  private async undrain(captureId: string): Promise<ApiResponse> {
    return { status: 200, body: { draining: false, spans: drainedSpans(await this.owner().undrain(captureId)) } };
  }

  private async resign(): Promise<ApiResponse> {
    this.owner();
    await this.capture.resign();
    return { status: 202, body: { resigned: this.capture.id } };
  }

  private listChangefeeds(): ApiResponse {
    this.owner();
    return { status: 200, body: [...this.capture.changefeeds.values()].sort((a, b) => a.id.localeCompare(b.id)).map((info) => this.describe(info)) };
  }

  private findChangefeed(id: string | undefined): ChangefeedInfo {
    this.owner();
    return this.service.find(id).value;
  }

  private describe(info: ChangefeedInfo): Record<string, unknown> {
    const owner = this.owner();
    const status: ChangefeedStatus | undefined = this.capture.statuses.get(info.id);
    const managed = owner.managed.get(info.id);
    // The persisted values: what survives any crash, so what a user may rely on. This
    // capture's cache of the status may lag etcd just after it became owner (the previous
    // owner's cache had its own writes at once), while its run read the status from etcd
    // itself: the higher of the two is persisted too, so the API never shows a checkpoint
    // going back across an owner change.
    const persisted = managed?.run.persisted;
    const checkpointTs = maxText(status?.checkpointTs ?? info.startTs, persisted?.checkpointTs);
    const resolvedTs = maxText(status?.resolvedTs ?? info.startTs, persisted?.resolvedTs);
    const watermark = managed?.coordinator.lastWatermark;
    const lags = owner.lagsMs(info.id, BigInt(checkpointTs), BigInt(resolvedTs));
    return {
      id: info.id,
      state: info.state,
      ...(info.error === undefined ? {} : { error: info.error }),
      source: info.source,
      sink: info.sink,
      tables: info.tables,
      start: info.start,
      startTs: info.startTs,
      ...(info.targetTs === undefined ? {} : { targetTs: info.targetTs }),
      autoSplit: info.autoSplit === true,
      epoch: info.epoch,
      checkpointTs,
      resolvedTs,
      checkpointLagMs: lags.checkpointLagMs,
      resolvedLagMs: lags.resolvedLagMs,
      watermark: watermarkView(watermark, info.state),
      spans: managed?.coordinator.manager.sets.size ?? 0,
      spansByState: managed?.coordinator.manager.stateCounts ?? null,
      warning: failingWarning(managed?.coordinator.failing(), managed?.failingForMs),
      // Splits and merges in flight (each holds the watermark until it settles).
      operations: managed === undefined ? [] : managed.coordinator.operations().map(operationView),
      moves: {
        queued: managed?.coordinator.movesQueued ?? 0,
        refused: (managed?.coordinator.moveRefusals ?? []).map((r) => ({ table: r.span.table, start: r.span.start, captureId: r.capture, reason: r.reason })),
      },
      // The spans holding the checkpoint back, as the captures last reported them.
      slowestSpans: managed === undefined ? [] : this.slowestOf(info.id, slowestSpansInView),
    };
  }

  /** The `k` slowest spans of a running changefeed, each as the API shows it. */
  private slowestOf(id: string, k: number): Record<string, unknown>[] {
    const owner = this.owner();
    const now = Date.now();
    return owner.slowestSpans(id, k).map((entry) => ({
      table: entry.span.table,
      start: entry.span.start,
      end: entry.span.end,
      captureId: entry.captureId,
      checkpointTs: entry.checkpointTs.toString(),
      resolvedTs: entry.resolvedTs.toString(),
      checkpointLagMs: owner.lagsMs(id, entry.checkpointTs, entry.resolvedTs).checkpointLagMs,
      eventsPerSecond: entry.eventsPerSecond,
      ageMs: Math.max(0, now - entry.atMs),
    }));
  }

  /**
   * The watermark of a changefeed as it changes: one event per change of checkpoint,
   * resolved or state (checked every 100 ms), until the client leaves or the owner stops.
   */
  private async *watermarkEvents(id: string, signal: AbortSignal): AsyncGenerator<unknown> {
    let last = '';
    // The signal is checked on every poll: a generator waiting for a change never reaches a
    // yield, so return() alone would not end it while the watermark stands still.
    while (!signal.aborted) {
      const role = this.capture.ownerRole;
      const current = this.capture.changefeeds.get(id);
      if (role === undefined || !role.active || current === undefined) return;
      const view = this.describe(current);
      const event = { checkpointTs: view.checkpointTs, resolvedTs: view.resolvedTs, checkpointLagMs: view.checkpointLagMs, state: view.state, watermark: view.watermark };
      // Lags and a stall's duration grow by themselves: not a change worth an event.
      const text = JSON.stringify({ ...event, checkpointLagMs: undefined, watermark: { ...(view.watermark as Record<string, unknown>), stalledForMs: undefined } });
      if (text !== last) {
        last = text;
        yield event;
      }
      await sleep(watermarkPollMs, signal);
    }
  }

  private async getChangefeed(id: string | undefined): Promise<ApiResponse> {
    const info = this.findChangefeed(id);
    const body = this.describe(info);
    const snapshot = await this.backfill.get(info);
    if (snapshot === undefined) return { status: 200, body: { ...body, backfill: null } };
    const progress = snapshot.records;
    let keysDone = 0;
    let keysTotal = 0;
    let done = 0;
    const backfilled = this.owner().managed.get(info.id)?.coordinator.manager.sets.size ?? 0;
    for (const record of progress.values()) {
      keysDone += record.keysDone;
      keysTotal += record.keysTotal;
      if (record.done) done++;
    }
    const spans = info.tables.filter((t) => t.backfillTs !== undefined).reduce((n, t) => n + (t.spans ?? 1), 0);
    const state = done >= spans ? 'done' : progress.size === 0 ? 'pending' : 'running';
    const timing = backfillTiming(progress.values(), keysDone, keysTotal, state === 'done', Date.now());
    const readAgeMs = Math.max(0, Date.now() - snapshot.readAtMs);
    return { status: 200, body: { ...body, backfill: { state, keysDone, keysTotal, spansDone: done, spans, spansTracked: backfilled, ...timing, readAgeMs } } };
  }

  /**
   * One page of a changefeed's spans in span order (table, start, end), from the
   * replication manager's incremental order: finding the cursor is O(log n), a page
   * O(limit), or O(scanMax) with a capture or state filter. The backfill progress comes
   * from {@link BackfillProgressCache} (at most its `maxAgeMs` old).
   */
  private async listSpans(id: string | undefined, query: URLSearchParams): Promise<ApiResponse> {
    const info = this.findChangefeed(id);
    const limits = this.options.spansPage ?? spansPageDefaults;
    const page = parseSpansPageQuery(query, limits);
    const managed = this.owner().managed.get(info.id);
    if (managed === undefined) return { status: 200, body: { spans: [], nextCursor: null } };
    const { capture, state } = page;
    const keep = capture === undefined && state === undefined ? undefined : (set: ReplicationSet): boolean => (capture === undefined || set.primary === capture) && (state === undefined || set.state === state);
    const found = managed.coordinator.manager.ordered.page({ after: page.after, table: page.table, keep, limit: page.limit, scanMax: limits.scanMax });
    const backfilled = new Set(info.tables.filter((t) => t.backfillTs !== undefined).map((t) => t.name));
    const records = found.items.some((set) => backfilled.has(set.span.table)) ? (await this.backfill.get(info))?.records : undefined;
    const now = Date.now();
    const spans = found.items.map((set) => {
      // What its primary last reported (slice or slowest list), when newer than the set's own.
      const progress = managed.progress.get(set.span, set.primary);
      return {
        table: set.span.table,
        start: set.span.start,
        end: set.span.end,
        state: set.state,
        primary: set.primary ?? null,
        secondaries: set.secondary === undefined ? [] : [set.secondary],
        checkpointTs: (progress !== undefined && progress.checkpointTs > set.checkpointTs ? progress.checkpointTs : set.checkpointTs).toString(),
        resolvedTs: (progress !== undefined && progress.resolvedTs > set.resolvedTs ? progress.resolvedTs : set.resolvedTs).toString(),
        progress: progress === undefined ? null : { checkpointTs: progress.checkpointTs.toString(), resolvedTs: progress.resolvedTs.toString(), eventsPerSecond: progress.eventsPerSecond, ageMs: Math.max(0, now - progress.atMs) },
        backfill: backfilled.has(set.span.table) ? backfillOf(records?.get(set.key)) : null,
      };
    });
    return { status: 200, body: { spans, nextCursor: found.next === undefined ? null : encodeSpanCursor(found.next) } };
  }

  /**
   * Counts of a changefeed's spans by table × state and by primary capture × state, kept
   * by the replication manager as sets change: O(tables + captures) per request.
   */
  private spansSummary(id: string | undefined): ApiResponse {
    const info = this.findChangefeed(id);
    const manager = this.owner().managed.get(info.id)?.coordinator.manager;
    if (manager === undefined) return { status: 200, body: { spans: 0, byState: null, tables: [], captures: [] } };
    const byName = <T extends string>(a: T, b: T): number => (a < b ? -1 : a > b ? 1 : 0);
    const tables = [...manager.summary.byTable].sort(([a], [b]) => byName(a, b)).map(([table, counts]) => ({ table, spans: total(counts), byState: { ...counts } }));
    const captures = [...manager.summary.byCapture]
      .sort(([a], [b]) => byName(a, b))
      .map(([capture, counts]) => ({ captureId: capture === noPrimary ? null : capture, spans: total(counts), byState: { ...counts } }));
    return { status: 200, body: { spans: manager.sets.size, byState: { ...manager.stateCounts }, tables, captures } };
  }

  /**
   * The k spans with the lowest checkpoints over every capture: the exact merge of the
   * captures' own lists of their slowest primaries (each sends its `--progress-slowest`),
   * as last reported, with each value's age.
   */
  private slowestSpans(id: string | undefined, query: URLSearchParams): ApiResponse {
    const info = this.findChangefeed(id);
    const kMax = this.capture.config.progressSlowestMax;
    const raw = query.get('k') ?? '10';
    const k = Number(raw);
    if (!/^\d+$/.test(raw) || k < 1 || k > kMax) throw new ValidationError(`k must be an integer from 1 to ${kMax} (each capture reports its ${kMax} slowest spans: --progress-slowest)`);
    for (const name of query.keys()) if (name !== 'k') throw new ValidationError(`unknown query parameter ${JSON.stringify(name)}; slowest takes only k`);
    if (this.owner().managed.get(info.id) === undefined) throw new ApiError(409, 'not-running', `changefeed ${info.id} is not running`);
    return { status: 200, body: this.slowestOf(info.id, k) };
  }

  private moveSpan(id: string | undefined, body: unknown): ApiResponse {
    const info = this.findChangefeed(id);
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ValidationError('the body must be a JSON object {"table", "start", "captureId"}');
    const fields = body as Record<string, unknown>;
    for (const key of Object.keys(fields)) if (!['table', 'start', 'captureId'].includes(key)) throw new ValidationError(`unknown field "${key}"`);
    if (typeof fields.table !== 'string' || typeof fields.start !== 'string' || typeof fields.captureId !== 'string') {
      throw new ValidationError('"table", "start" and "captureId" must be strings');
    }
    const managed = this.owner().managed.get(info.id);
    if (managed === undefined) throw new ApiError(409, 'not-running', `changefeed ${info.id} is not running`);
    const set = managed.coordinator.findSpan(fields.table, fields.start);
    if (set === undefined) throw new ApiError(404, 'unknown-span', `no span of table ${JSON.stringify(fields.table)} starts at ${JSON.stringify(fields.start)}`);
    const result = managed.coordinator.requestMove(spanKey(set.span), fields.captureId);
    if (!result.ok) throw refusal(result);
    return { status: 202, body: { moving: { table: set.span.table, start: set.span.start, to: fields.captureId } } };
  }

  /** `{table, start, at?}`: splits the span of `table` starting at `start` (at `at`, or where the owner picks). */
  private async splitSpan(id: string | undefined, body: unknown): Promise<ApiResponse> {
    const info = this.findChangefeed(id);
    const fields = operationBody(body, ['table', 'start', 'at'], '{"table", "start", "at"?}');
    const at = fields.at;
    if (at !== undefined && (typeof at !== 'string' || at.length === 0 || at.length > spanKeyLengthMax)) {
      throw new ValidationError(`"at" must be a non-empty key of at most ${spanKeyLengthMax} characters`);
    }
    const result = await this.owner().splitSpan(info.id, fields.table, fields.start, at as string | undefined);
    if (!result.ok) throw operationRefusal(result);
    return { status: 202, body: { operation: operationView(result.operation) } };
  }

  /** `{table, start}`: merges the span of `table` starting at `start` with the next one. */
  private mergeSpans(id: string | undefined, body: unknown): ApiResponse {
    const info = this.findChangefeed(id);
    const fields = operationBody(body, ['table', 'start'], '{"table", "start"}');
    const result = this.owner().mergeSpans(info.id, fields.table, fields.start);
    if (!result.ok) throw operationRefusal(result);
    return { status: 202, body: { operation: operationView(result.operation) } };
  }

  private rebalance(id: string | undefined): ApiResponse {
    const info = this.findChangefeed(id);
    const managed = this.owner().managed.get(info.id);
    if (managed === undefined) throw new ApiError(409, 'not-running', `changefeed ${info.id} is not running`);
    const result = managed.coordinator.requestRebalance();
    if (!result.ok) throw refusal(result);
    return { status: 202, body: { rebalancing: info.id } };
  }
}

/** Sets over all states. */
function total(counts: Readonly<Record<string, number>>): number {
  return Object.values(counts).reduce((n, c) => n + c, 0);
}

/** One span's backfill progress for the API. */
function backfillOf(record: BackfillRecord | undefined): { state: string; keysDone: number; keysTotal: number; startedAt: string | null; finishedAt: string | null; durationMs: number | null } {
  if (record === undefined) return { state: 'pending', keysDone: 0, keysTotal: 0, startedAt: null, finishedAt: null, durationMs: null };
  const timing = backfillTiming([record], record.keysDone, record.keysTotal, record.done, Date.now());
  return { state: record.done ? 'done' : 'running', keysDone: record.keysDone, keysTotal: record.keysTotal, startedAt: timing.startedAt, finishedAt: timing.finishedAt, durationMs: timing.durationMs };
}

/** An etcd error that a retry may not meet: unavailable, a deadline, a client that backs off. */
function isEtcdUnavailable(error: unknown): boolean {
  return (
    error instanceof GRPCUnavailableError ||
    error instanceof GRPCDeadlineExceededError ||
    error instanceof GRPCCancelledError ||
    (error instanceof Error && /circuit breaker is open|UNAVAILABLE|DEADLINE_EXCEEDED/.test(error.message))
  );
}

/** Longest key a split or merge request may name (as table boundaries may be). */
export const spanKeyLengthMax = 1024;

/** A split or merge body: an object of only `allowed` fields, `table` and `start` strings. */
function operationBody(body: unknown, allowed: readonly string[], shape: string): { table: string; start: string } & Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ValidationError(`the body must be a JSON object ${shape}`);
  const fields = body as Record<string, unknown>;
  for (const key of Object.keys(fields)) if (!allowed.includes(key)) throw new ValidationError(`unknown field "${key}"; the body is ${shape}`);
  if (typeof fields.table !== 'string' || fields.table.length === 0 || fields.table.length > changefeedLimits.idLengthMax) {
    throw new ValidationError(`"table" must be a table name of 1-${changefeedLimits.idLengthMax} characters`);
  }
  if (typeof fields.start !== 'string' || fields.start.length > spanKeyLengthMax) throw new ValidationError(`"start" must be the span's start key, a string of at most ${spanKeyLengthMax} characters`);
  return fields as { table: string; start: string } & Record<string, unknown>;
}

/**
 * A refused split or merge: 400 for what the request got wrong (an unknown table, a
 * split key not strictly inside the span), 404 for a span that does not exist, 503 when
 * the source could not be asked for a split key, 409 for the rest (wrong state).
 */
function operationRefusal(result: { code: SpanOperationRefusal; message: string }): ApiError {
  switch (result.code) {
    case 'unknown-table':
    case 'bad-split-key':
      return new ApiError(400, result.code, result.message);
    case 'unknown-span':
      return new ApiError(404, result.code, result.message);
    case 'source-unavailable':
      return new ApiError(503, result.code, result.message);
    default:
      return new ApiError(409, result.code, result.message);
  }
}

/** A split or merge as the API shows it. */
function operationView(operation: SpanOperationView): Record<string, unknown> {
  return {
    id: operation.id,
    kind: operation.kind,
    phase: operation.phase,
    table: operation.table,
    from: operation.from.map((span) => ({ start: span.start, end: span.end })),
    to: operation.to.map((span) => ({ start: span.start, end: span.end })),
    targets: operation.targets,
    sinceTick: operation.sinceTick,
    ...(operation.reason === undefined ? {} : { reason: operation.reason }),
  };
}

/** Maps a refused core request to 404 (unknown things) or 409 (wrong state). */
function refusal(result: RequestResult & { ok: false }): ApiError {
  const notFound = result.code === 'unknown-span' || result.code === 'unknown-capture';
  return new ApiError(notFound ? 404 : 409, result.code, result.message);
}

/**
 * A changefeed's watermark as the API shows it: `state`, a one-line `reason` (null while
 * advancing) and, unless advancing, a `code`; a stall adds how long, the checkpoint that
 * stands still, and the spans (a bounded list and a count) and captures holding it back.
 */
function watermarkView(watermark: Watermark | undefined, infoState: string): Record<string, unknown> {
  if (watermark === undefined) return { state: 'cannot-proceed', reason: infoState === 'normal' ? 'starting' : infoState };
  switch (watermark.state) {
    case 'advancing':
      return { state: 'advancing', reason: null };
    case 'cannot-proceed':
      return { state: 'cannot-proceed', reason: describeReason(watermark.reason), code: watermark.reason.code };
    case 'stalled': {
      const { heldBy } = watermark;
      return {
        state: 'stalled',
        reason: describeStall(heldBy),
        code: 'checkpoint-stalled',
        stalledForMs: Math.round(watermark.stalledForMs),
        checkpointTs: watermark.checkpointTs.toString(),
        resolvedTs: watermark.resolvedTs.toString(),
        heldBy: {
          spans: heldBy.spans.map((h) => ({ table: h.span.table, start: h.span.start, end: h.span.end, captureId: h.capture, checkpointTs: h.checkpointTs.toString() })),
          spanCount: heldBy.spanCount,
          captures: heldBy.captures,
          captureCount: heldBy.captureCount,
        },
      };
    }
    default:
      return assertNever(watermark, 'watermark');
  }
}

/** Pipelines retrying through an outage, as the changefeed's warning (null when none). */
function failingWarning(failing: { spans: number; error: string | undefined } | undefined, failingForMs: number | undefined): { failingSpans: number; error: string; failingForMs: number | null } | null {
  if (failing === undefined || failing.spans === 0) return null;
  return { failingSpans: failing.spans, error: failing.error ?? '', failingForMs: failingForMs ?? null };
}

/**
 * The spans a drain or undrain left on the capture (null: not known yet, ask again); a
 * refusal as an ApiError.
 */
function drainedSpans(result: DrainResult): number | null {
  if (result.ok) return result.remainingSpans;
  const { code, message } = result;
  throw code === 'not-persisted' || code === 'drains-loading' || code === 'busy' ? new ApiError(503, code, message) : refusal({ ok: false, code, message });
}

/** How often a watermark stream looks for a change. */
const watermarkPollMs = 100;

/**
 * A Server-Sent Events response: each value the source yields is one event. The source
 * is opened with a signal that aborts when the client goes away.
 */
class EventStream {
  constructor(readonly open: (signal: AbortSignal) => AsyncIterable<unknown>) {}
}

/** Writes an event stream until the source ends or the client goes away. */
async function streamEvents(res: ServerResponse, stream: EventStream, open: { inc(): void; dec(): void }): Promise<void> {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  // The response, not the request, tells that the client left: the request closed as soon
  // as its (empty) body was read.
  const abort = new AbortController();
  res.on('close', () => abort.abort());
  if (res.destroyed) abort.abort();
  const events = stream.open(abort.signal)[Symbol.asyncIterator]();
  open.inc();
  try {
    for (;;) {
      const next = await events.next();
      if (next.done === true || abort.signal.aborted) break;
      res.write(`event: watermark\ndata: ${redactSecrets(JSON.stringify(next.value))}\n\n`);
    }
  } finally {
    open.dec();
    // Ends the source's generator (its finally blocks run) whether it or the client stopped.
    await events.return?.();
    res.end();
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

/** A response body sent as it is (e.g. Prometheus text), not as JSON. */
class RawBody {
  constructor(
    readonly text: string,
    readonly contentType: string,
  ) {}
}

/** Sends one answer, unless one was sent already or the client is gone. */
function send(res: ServerResponse, status: number, body: unknown, headers: Readonly<Record<string, string>> = {}): void {
  if (res.headersSent || res.destroyed) return;
  if (body instanceof RawBody) {
    res.writeHead(status, { ...headers, 'content-type': body.contentType });
    res.end(body.text);
    return;
  }
  // No answer shows a source's or sink's password (info URIs, errors that quote them).
  const text = redactSecrets(JSON.stringify(body, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value)));
  res.writeHead(status, { ...headers, 'content-type': 'application/json' });
  res.end(text);
}

/** A body over `bodyBytesMax`: answered 413, then the connection is closed. */
class BodyTooLargeError extends ApiError {
  constructor() {
    super(413, 'body-too-large', `request bodies are limited to ${bodyBytesMax} bytes`);
  }
}

/**
 * Answers 413 with `Connection: close`, and ends the response only once the rest of the
 * body has been read and thrown away (or a drain bound is passed): ending it closes the
 * socket, and a socket closed with unread bytes sends a reset that can overtake the
 * answer. The answer's bytes go out at once, so a client that reads while it sends sees
 * them before it finishes.
 */
function refuseBody(req: IncomingMessage, res: ServerResponse, error: BodyTooLargeError): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify({ error: { code: error.code, message: error.message } });
  res.writeHead(413, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), connection: 'close' });
  res.write(text);
  let drained = 0;
  let finished = false;
  const finish = (): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    req.removeListener('data', discard);
    res.end();
  };
  const discard = (chunk: Buffer): void => {
    drained += chunk.length;
    if (drained > refusedBodyDrainBytesMax) finish();
  };
  const timer = setTimeout(finish, refusedBodyDrainMs);
  req.on('data', discard);
  req.once('end', finish);
  req.once('close', finish);
  req.once('error', () => {
    // The client left while sending the rest: nothing more to read.
  });
  req.resume();
  if (req.readableEnded) finish();
}

/**
 * Reads a request body up to `bodyBytesMax`. Past it, stops keeping bytes and throws
 * `BodyTooLargeError` (the stream is left open, for `refuseBody` to drain); a client that
 * goes away meanwhile is a `ClientGoneError`. No `for await`: leaving such a loop early
 * destroys the request and with it the socket, before any answer is written.
 */
function readBody(req: IncomingMessage): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (Number.isFinite(declared) && declared > bodyBytesMax) return Promise.reject(new BodyTooLargeError());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = (): void => {
      req.removeListener('data', onData);
      req.removeListener('end', onEnd);
      req.removeListener('error', onError);
      req.removeListener('close', onClose);
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > bodyBytesMax) {
        cleanup();
        // Paused until refuseBody drains it: no 'data' event may be lost unheard meanwhile.
        req.pause();
        reject(new BodyTooLargeError());
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      cleanup();
      resolve(Buffer.concat(chunks));
    };
    const onError = (error: Error): void => {
      cleanup();
      reject(new ClientGoneError('the client went away while sending its request', { cause: error }));
    };
    const onClose = (): void => {
      cleanup();
      if (req.complete) resolve(Buffer.concat(chunks));
      else reject(new ClientGoneError('the client went away while sending its request'));
    };
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', onError);
    req.once('close', onClose);
  });
}

/**
 * The URL of a request: an origin-form target (`/path?query`), or the path of an
 * absolute-form one (`http://host/path`, which HTTP/1.1 servers must accept). Anything
 * else (`*`, an authority) is a 400.
 */
function requestUrl(target: string | undefined): URL {
  const path = target ?? '/';
  const bad = (why: string): ApiError => new ApiError(400, 'bad-path', `the request target ${JSON.stringify(path.slice(0, 200))} ${why}`);
  if (!path.startsWith('/')) {
    let absolute: URL;
    try {
      absolute = new URL(path);
    } catch {
      throw bad('is not a path');
    }
    if (absolute.protocol !== 'http:' && absolute.protocol !== 'https:') throw bad('is not a path');
    return new URL(`http://localhost${absolute.pathname}${absolute.search}`);
  }
  // Parsed after a fixed origin, so that `//host/x` is a path, not a host.
  try {
    return new URL(`http://localhost${path}`);
  } catch {
    throw bad('is not a valid path');
  }
}

/** Decodes one path parameter; a bad percent-encoding is the client's error. */
function decodePathSegment(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new ApiError(400, 'bad-path', `the path segment ${JSON.stringify(raw.slice(0, 200))} is not valid percent-encoding`);
  }
}

/** The schema gate: a body the OpenAPI document refuses is a 400 before any handler runs. */
function checkBody(schema: RequestSchema | undefined, body: unknown): void {
  if (schema === undefined) return;
  if (body === undefined) {
    if (schema.required) throw new ApiError(400, 'invalid', 'this request needs a JSON body');
    return;
  }
  const problem = schema.check(body);
  if (problem !== undefined) throw new ApiError(400, 'invalid', problem);
}

/** Answers a request Node could not parse (bad request line, headers too large, timeout). */
function answerClientError(error: NodeJS.ErrnoException, socket: Duplex): void {
  // Mid-answer (a later request on a kept-alive connection) no second status line fits.
  const answering = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
  if (error.code === 'ECONNRESET' || !socket.writable || answering) {
    socket.destroy();
    return;
  }
  const [status, reason] =
    error.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Request Header Fields Too Large'] : error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Request Timeout'] : [400, 'Bad Request'];
  const text = JSON.stringify({ error: { code: 'bad-request', message: `the request could not be parsed (${error.code ?? 'unknown'})` } });
  socket.end(`HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
}

/** The higher of a decimal timestamp and an optional bigint one, as decimal text. */
function maxText(text: string, other: bigint | undefined): string {
  return other !== undefined && other > BigInt(text) ? other.toString() : text;
}

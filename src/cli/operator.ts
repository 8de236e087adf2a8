/**
 * `spanfeed cli --server http://host:port <noun> <verb> ...`: the operator's command line
 * over the HTTP API. Human tables by default, `--json` for scripts; a clear message and
 * a non-zero exit on any error.
 */
import { parseArgs } from 'node:util';
import { redactSecrets } from '../pipeline/redact.ts';
import { apiRequest, readText } from '../api/api-request.ts';
import type { ApiClientTls } from '../api/api-request.ts';
import { readCaFile, readTlsMaterial } from '../security/tls-files.ts';

export const cliUsage = `spanfeed cli [--server http://127.0.0.1:8080] [--token <token>] [--ca <file>] [--json] <noun> <verb> [args]

  --server (or SPANFEED_SERVER) the capture to talk to; --token (or SPANFEED_TOKEN) the bearer
  token, when the servers run with --auth-token-file (read tokens: lists and gets only)
  --ca (or SPANFEED_CA) the CA file that signs the captures' certificates, for an
  https:// server; --cert and --key (or SPANFEED_CERT, SPANFEED_KEY) a client certificate,
  when the servers give certificate names roles (--tls-client-roles)

  changefeed create --id <id> --source <uri> --sink <uri> --table <name>[:<prefix>][:<spans>] ...
                    [--start now|earliest|<ts>] [--target-ts <ts>] [--backfill] [--auto-split on|off]
  changefeed list | get <id> | pause <id> | resume <id> [--backfill [--since-ts <ts>]] | remove <id>
  changefeed update <id> [--table <name>[:<prefix>][:<spans>] ... [--backfill]] [--auto-split on|off]
                                    new tables, the split policy on or off, or both; --auto-split
                                    alone keeps the tables and their spans as they are
  changefeed backfill <id>          progress bar until the backfill is done
  capture list | drain <id>         drain shows a progress bar until 0 spans remain
  capture undrain <id>              cancels a drain (rebalance to give spans back)
  span list <changefeed> [--table <t>] [--capture <id>] [--state <state>] [--page-size <n>]
                                    every span in span order, fetched page by page
  span move <changefeed> --table <t> --start <key> --capture <id>
  span split <changefeed> <table> <start> [--at <key>]
                                    splits the span of <table> that starts at <start> in two:
                                    at <key>, or (without --at) where the owner picks: the
                                    median of the source's keys in it, else its middle
  span merge <changefeed> <table> <start>
                                    merges the span that starts at <start> with the next one
  span slowest <changefeed> [--count K]   the K spans with the lowest checkpoints (default 10)
  rebalance <changefeed>
  owner resign
  watermark watch <changefeed>      a live line: checkpoint, resolved, lag, state; a stalled
                                    checkpoint also lists the spans and captures holding it back
`;

class CliError extends Error {}

interface Context {
  readonly server: string;
  /** The bearer token sent with every request; undefined: none. */
  readonly token: string | undefined;
  readonly json: boolean;
  readonly out: (text: string) => void;
  /** For an https:// server: the CA to trust and a client certificate to show. */
  readonly tls: ApiClientTls | undefined;
}

/** How long one API call may take, answer included. */
const callTimeoutMs = 15_000;

/** `span list` stops after this many pages: 10,000 pages of the default 1,000 spans is 10 million. */
const spanListPagesMax = 10_000;

async function call(ctx: Context, method: string, path: string, body?: unknown): Promise<any> {
  let response: { status: number; ok: boolean };
  let text: string;
  try {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (ctx.token !== undefined) headers.authorization = `Bearer ${ctx.token}`;
    const signal = AbortSignal.timeout(callTimeoutMs);
    const answer = await apiRequest(`${ctx.server}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), tls: ctx.tls, signal, timeoutMs: callTimeoutMs });
    text = await readText(answer.body);
    response = { status: answer.status, ok: answer.status >= 200 && answer.status < 300 };
  } catch (error) {
    throw new CliError(`cannot reach ${ctx.server}: ${(error as Error).message}`);
  }
  let parsed: any;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new CliError(`${method} ${path}: ${response.status} ${text.slice(0, 200)}`);
  }
  if (response.status === 401) {
    const hint = ctx.token === undefined ? 'the server needs a token: give --token <token> or set SPANFEED_TOKEN' : 'the server does not know this token (--token or SPANFEED_TOKEN)';
    throw new CliError(`${hint} (${parsed?.error?.code ?? 401})`);
  }
  if (response.status === 403 && parsed?.error?.code === 'forbidden') throw new CliError(`${parsed.error.message} (forbidden)`);
  if (!response.ok) throw new CliError(`${parsed?.error?.message ?? text} (${parsed?.error?.code ?? response.status})`);
  return parsed;
}

/** A plain text table. */
function table(rows: readonly Record<string, unknown>[], columns: readonly string[]): string {
  const cell = (v: unknown): string => (v === null || v === undefined ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v));
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)));
  const line = (values: readonly string[]): string => values.map((v, i) => v.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  return [line(columns.map((c) => c.toUpperCase())), ...rows.map((r) => line(columns.map((c) => cell(r[c]))))].join('\n') + '\n';
}

/** A watermark in one short cell: its state, and how long for a stall. */
function watermarkCell(watermark: any): string {
  return watermark.state === 'stalled' ? `stalled ${seconds(watermark.stalledForMs)}` : String(watermark.state);
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`;
}

/**
 * What holds a stalled checkpoint back, for a human: the captures, and the spans listed
 * (the API bounds the list) with how many there are in all.
 */
function stallLines(watermark: any): string {
  const held = watermark.heldBy;
  const spans = held.spans.map((s: any) => `    ${s.table} [${JSON.stringify(s.start)}, ${JSON.stringify(s.end)}) on ${s.captureId} at ${s.checkpointTs}`);
  const more = held.spanCount > held.spans.length ? [`    ... and ${held.spanCount - held.spans.length} more`] : [];
  const captures = `${held.captures.join(', ')}${held.captureCount > held.captures.length ? ` and ${held.captureCount - held.captures.length} more` : ''}`;
  return [`  STALLED for ${seconds(watermark.stalledForMs)} at checkpoint ${watermark.checkpointTs} (resolved ${watermark.resolvedTs}), held back by ${held.spanCount} spans on ${captures}:`, ...spans, ...more].join('\n');
}

function bar(done: number, total: number): string {
  const width = 30;
  const filled = total <= 0 ? width : Math.min(width, Math.round((done / total) * width));
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
}

/** `name[:prefix][:spans]` -> a table spec. */
function tableSpec(text: string): Record<string, unknown> {
  const [name, prefix, spans] = text.split(':');
  if (name === undefined || name === '') throw new CliError(`--table ${JSON.stringify(text)}: expected <name>[:<prefix>][:<spans>]`);
  const spec: Record<string, unknown> = { name };
  if (prefix !== undefined && prefix !== '') spec.prefix = prefix;
  if (spans !== undefined) {
    if (!/^\d+$/.test(spans)) throw new CliError(`--table ${JSON.stringify(text)}: spans must be a number`);
    spec.spans = Number(spans);
  }
  return spec;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function env(name: string): string | undefined {
  const value = process.env[name];
  return value === '' ? undefined : value;
}

/** The client side's TLS from --ca, --cert and --key; undefined when none is given. */
function clientTls(caFile: string | undefined, certFile: string | undefined, keyFile: string | undefined): ApiClientTls | undefined {
  if ((certFile === undefined) !== (keyFile === undefined)) throw new CliError('--cert and --key go together');
  if (caFile === undefined) {
    if (certFile !== undefined) throw new CliError('--cert needs --ca');
    return undefined;
  }
  if (certFile === undefined || keyFile === undefined) return { ca: readCaFile('--ca', caFile) };
  const material = readTlsMaterial('-', { caFile, certFile, keyFile });
  return { ca: material.ca, cert: material.cert, key: material.key };
}

function need(value: string | undefined, what: string): string {
  if (value === undefined || value === '') throw new CliError(`missing ${what}; run "spanfeed cli --help"`);
  return value;
}

/** `on` or `off` as a boolean (the value of a switch like `--auto-split`). */
function onOff(value: string, what: string): boolean {
  if (value === 'on') return true;
  if (value === 'off') return false;
  throw new CliError(`${what} takes on or off, not ${JSON.stringify(value)}`);
}

export async function runCli(argv: readonly string[], write: (text: string) => void = (t) => process.stdout.write(t)): Promise<number> {
  // Answers are redacted by the server already; this also covers what the CLI echoes itself.
  const out = (text: string): void => write(redactSecrets(text));
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        server: { type: 'string' },
        token: { type: 'string' },
        ca: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean' },
        id: { type: 'string' },
        source: { type: 'string' },
        sink: { type: 'string' },
        table: { type: 'string', multiple: true },
        start: { type: 'string' },
        'target-ts': { type: 'string' },
        backfill: { type: 'boolean' },
        'since-ts': { type: 'string' },
        capture: { type: 'string' },
        state: { type: 'string' },
        'page-size': { type: 'string' },
        'interval-ms': { type: 'string' },
        count: { type: 'string' },
        at: { type: 'string' },
        'auto-split': { type: 'string' },
      },
      strict: true,
    });
  } catch (error) {
    process.stderr.write(redactSecrets(`spanfeed cli: ${(error as Error).message}\n`));
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help === true || positionals.length === 0) {
    out(cliUsage);
    return values.help === true ? 0 : 2;
  }
  const token = values.token ?? (process.env.SPANFEED_TOKEN === '' ? undefined : process.env.SPANFEED_TOKEN);
  let tls: ApiClientTls | undefined;
  try {
    tls = clientTls(values.ca ?? env('SPANFEED_CA'), values.cert ?? env('SPANFEED_CERT'), values.key ?? env('SPANFEED_KEY'));
  } catch (error) {
    process.stderr.write(`spanfeed cli: ${(error as Error).message}\n`);
    return 2;
  }
  const ctx: Context = { server: (values.server ?? process.env.SPANFEED_SERVER ?? 'http://127.0.0.1:8080').replace(/\/$/, ''), token, json: values.json === true, out, tls };
  const [noun, verb, arg, arg2, arg3] = positionals;
  const print = (value: unknown, render: () => string): void => out(ctx.json ? `${JSON.stringify(value)}\n` : render());
  const intervalMs = Number(values['interval-ms'] ?? 500);
  const count = values.count === undefined ? Infinity : Number(values.count);
  try {
    switch (`${noun} ${verb}`) {
      case 'changefeed create': {
        const body: Record<string, unknown> = {
          id: need(values.id, '--id'),
          source: { uri: need(values.source, '--source') },
          sink: { uri: need(values.sink, '--sink') },
          tables: (values.table ?? []).map(tableSpec),
        };
        if (values.start !== undefined) body.start = values.start;
        if (values['target-ts'] !== undefined) body.targetTs = values['target-ts'];
        if (values.backfill === true) body.backfill = true;
        if (values['auto-split'] !== undefined) body.autoSplit = onOff(values['auto-split'], '--auto-split');
        const created = await call(ctx, 'POST', '/api/v1/changefeeds', body);
        print(created, () => `created changefeed ${created.id} starting at ${created.startTs}\n`);
        return 0;
      }
      case 'changefeed list': {
        const list = await call(ctx, 'GET', '/api/v1/changefeeds');
        print(list, () => table(list.map((c: any) => ({ ...c, watermark: watermarkCell(c.watermark), spans: c.spans })), ['id', 'state', 'checkpointTs', 'resolvedTs', 'checkpointLagMs', 'watermark', 'spans']));
        return 0;
      }
      case 'changefeed get': {
        const c = await call(ctx, 'GET', `/api/v1/changefeeds/${encodeURIComponent(need(arg, 'a changefeed id'))}`);
        print(c, () => `${Object.entries(c).map(([k, v]) => `${k.padEnd(16)} ${typeof v === 'object' ? JSON.stringify(v) : String(v)}`).join('\n')}\n${c.watermark?.state === 'stalled' ? `${stallLines(c.watermark)}\n` : ''}`);
        return 0;
      }
      case 'changefeed update': {
        const body: Record<string, unknown> = {};
        if (values.table !== undefined) body.tables = values.table.map(tableSpec);
        if (values.backfill === true) body.backfill = true;
        if (values['auto-split'] !== undefined) body.autoSplit = onOff(values['auto-split'], '--auto-split');
        if (body.tables === undefined && body.autoSplit === undefined) throw new CliError('changefeed update needs --table or --auto-split');
        const c = await call(ctx, 'PUT', `/api/v1/changefeeds/${encodeURIComponent(need(arg, 'a changefeed id'))}`, body);
        print(c, () => `updated changefeed ${c.id}: ${c.tables.map((t: any) => t.name).join(', ')}; autoSplit ${c.autoSplit === true ? 'on' : 'off'}\n`);
        return 0;
      }
      case 'changefeed pause':
      case 'changefeed resume': {
        // Resume --backfill copies every table again at the current revision (after a compaction).
        // With --since-ts R only the keys modified after R are copied (incremental).
        const since = values['since-ts'];
        if (since !== undefined && (verb !== 'resume' || values.backfill !== true)) throw new CliError('--since-ts goes with resume --backfill');
        const body = verb === 'resume' && values.backfill === true ? { backfill: since === undefined ? true : { sinceTs: since } } : undefined;
        const c = await call(ctx, 'POST', `/api/v1/changefeeds/${encodeURIComponent(need(arg, 'a changefeed id'))}/${verb}`, body);
        print(c, () => `changefeed ${c.id} is ${c.state} (epoch ${c.epoch})\n`);
        return 0;
      }
      case 'changefeed remove': {
        const r = await call(ctx, 'DELETE', `/api/v1/changefeeds/${encodeURIComponent(need(arg, 'a changefeed id'))}`);
        print(r, () => `removed changefeed ${r.removed}\n`);
        return 0;
      }
      case 'changefeed backfill': {
        const id = encodeURIComponent(need(arg, 'a changefeed id'));
        for (let i = 0; i < count; i++) {
          const c = await call(ctx, 'GET', `/api/v1/changefeeds/${id}`);
          const b = c.backfill;
          if (b === null) throw new CliError(`changefeed ${c.id} has no backfill`);
          const rate = b.keysPerSecond === null ? '' : `, ${b.keysPerSecond} keys/s`;
          const left = b.state === 'done' ? ` in ${formatMs(b.durationMs)}` : b.etaMs === null ? '' : `, ${formatMs(b.etaMs)} left`;
          print(b, () => `\r${bar(b.keysDone, b.keysTotal)} ${b.keysDone}/${b.keysTotal} keys, ${b.spansDone}/${b.spans} spans ${b.state}${rate}${left}   `);
          if (b.state === 'done') break;
          await sleep(intervalMs);
        }
        if (!ctx.json) out('\n');
        return 0;
      }
      case 'capture list': {
        const list = await call(ctx, 'GET', '/api/v1/captures');
        print(list, () => table(list, ['id', 'isOwner', 'draining', 'spans', 'grpcAddr', 'httpAddr']));
        return 0;
      }
      case 'capture drain': {
        const id = encodeURIComponent(need(arg, 'a capture id'));
        let first: number | undefined;
        let drained = false;
        for (let i = 0; i < count; i++) {
          const r = await call(ctx, 'POST', `/api/v1/captures/${id}/drain`);
          // null: the owner has not heard from the capture yet (say, just after an owner
          // change); only a known 0 means drained.
          if (r.remainingSpans === null) {
            print(r, () => `\rcounting the spans on the capture...   `);
          } else {
            first ??= r.remainingSpans;
            print(r, () => `\r${bar((first ?? 0) - r.remainingSpans, first ?? 0)} ${r.remainingSpans} spans remaining   `);
            if (r.remainingSpans === 0) {
              drained = true;
              break;
            }
          }
          await sleep(intervalMs);
        }
        if (!drained) {
          if (!ctx.json) out('\n');
          process.stderr.write(`capture ${need(arg, 'a capture id')} is not drained yet (asked ${count} times); ask again\n`);
          return 1;
        }
        if (!ctx.json) out('\ndrained\n');
        return 0;
      }
      case 'capture undrain': {
        const r = await call(ctx, 'DELETE', `/api/v1/captures/${encodeURIComponent(need(arg, 'a capture id'))}/drain`);
        print(r, () => `capture ${arg} is no longer draining; it holds ${r.spans} spans\n`);
        return 0;
      }
      case 'span list': {
        const id = encodeURIComponent(need(verb === 'list' ? arg : undefined, 'a changefeed id'));
        const filters = new URLSearchParams();
        if (values['page-size'] !== undefined) filters.set('limit', values['page-size']);
        if (values.table?.[0] !== undefined) filters.set('table', values.table[0]);
        if (values.capture !== undefined) filters.set('capture', values.capture);
        if (values.state !== undefined) filters.set('state', values.state);
        // The API answers pages (issue 11): follow nextCursor to the end.
        const list: any[] = [];
        let cursor: string | null = null;
        for (let pages = 0; ; pages++) {
          if (pages >= spanListPagesMax) throw new CliError(`span list: stopped after ${spanListPagesMax} pages`);
          const query = new URLSearchParams(filters);
          if (cursor !== null) query.set('cursor', cursor);
          const text = query.toString();
          const page = await call(ctx, 'GET', `/api/v1/changefeeds/${id}/spans${text === '' ? '' : `?${text}`}`);
          list.push(...(page.spans as any[]));
          cursor = page.nextCursor as string | null;
          if (cursor === null) break;
        }
        print(list, () => table(list.map((s: any) => ({ ...s, start: JSON.stringify(s.start), end: JSON.stringify(s.end) })), ['table', 'start', 'end', 'state', 'primary', 'checkpointTs']));
        return 0;
      }
      case 'span slowest': {
        const k = values.count === undefined ? 10 : Number(values.count);
        const id = encodeURIComponent(need(arg, 'a changefeed id'));
        const list = await call(ctx, 'GET', `/api/v1/changefeeds/${id}/spans/slowest?k=${encodeURIComponent(String(k))}`);
        print(list, () =>
          table(
            list.map((s: any) => ({ ...s, start: JSON.stringify(s.start), end: JSON.stringify(s.end), lag: s.checkpointLagMs === null ? null : seconds(s.checkpointLagMs), age: seconds(s.ageMs) })),
            ['table', 'start', 'end', 'captureId', 'checkpointTs', 'lag', 'eventsPerSecond', 'age'],
          ),
        );
        return 0;
      }
      case 'span move': {
        const body = { table: need(values.table?.[0], '--table'), start: values.start ?? '', captureId: need(values.capture, '--capture') };
        const r = await call(ctx, 'POST', `/api/v1/changefeeds/${encodeURIComponent(need(arg, 'a changefeed id'))}/spans/move`, body);
        print(r, () => `moving ${r.moving.table} ${JSON.stringify(r.moving.start)} to ${r.moving.to}\n`);
        return 0;
      }
      case 'span split':
      case 'span merge': {
        // A span's start may be "" (the first span of a table from the keyspace's start).
        if (arg3 === undefined) throw new CliError(`span ${verb}: expected <changefeed> <table> <start>; run "spanfeed cli --help"`);
        if (positionals.length > 5) throw new CliError(`span ${verb}: unexpected argument ${JSON.stringify(positionals[5])}`);
        if (verb === 'merge' && values.at !== undefined) throw new CliError('span merge takes no --at');
        const body: Record<string, unknown> = { table: need(arg2, 'a table'), start: arg3 };
        if (values.at !== undefined) body.at = values.at;
        const r = await call(ctx, 'POST', `/api/v1/changefeeds/${encodeURIComponent(need(arg, 'a changefeed id'))}/spans/${verb}`, body);
        const o = r.operation;
        const spans = (list: { start: string; end: string }[]): string => list.map((s) => `[${JSON.stringify(s.start)}, ${JSON.stringify(s.end)})`).join(' + ');
        print(r, () => `${o.kind} ${o.id} of ${o.table} started: ${spans(o.from)} -> ${spans(o.to)}
`);
        return 0;
      }
      case 'rebalance undefined':
      case `rebalance ${verb}`: {
        const r = await call(ctx, 'POST', `/api/v1/changefeeds/${encodeURIComponent(need(verb, 'a changefeed id'))}/rebalance`);
        print(r, () => `rebalancing ${r.rebalancing}\n`);
        return 0;
      }
      case 'owner resign': {
        const r = await call(ctx, 'POST', '/api/v1/owner/resign');
        print(r, () => `owner ${r.resigned} resigned\n`);
        return 0;
      }
      case 'watermark watch': {
        const id = encodeURIComponent(need(arg, 'a changefeed id'));
        for (let i = 0; i < count; i++) {
          const c = await call(ctx, 'GET', `/api/v1/changefeeds/${id}`);
          const stalled = c.watermark.state === 'stalled';
          const line = {
            checkpointTs: c.checkpointTs,
            resolvedTs: c.resolvedTs,
            checkpointLagMs: c.checkpointLagMs,
            state: c.watermark.state,
            reason: c.watermark.reason,
            ...(stalled ? { stalledForMs: c.watermark.stalledForMs, heldBy: c.watermark.heldBy } : {}),
            warning: c.warning ?? null,
          };
          const warning = c.warning ? `  WARNING ${c.warning.failingSpans} spans retrying${c.warning.failingForMs ? ` for ${Math.round(c.warning.failingForMs / 1000)} s` : ''}: ${c.warning.error}` : '';
          // A stall is said on lines of its own (the live line would hide the spans).
          print(line, () =>
            stalled
              ? `\rcheckpoint ${c.checkpointTs}  resolved ${c.resolvedTs}  lag ${c.checkpointLagMs ?? '-'} ms  STALLED${warning}\n${stallLines(c.watermark)}\n`
              : `\rcheckpoint ${c.checkpointTs}  resolved ${c.resolvedTs}  lag ${c.checkpointLagMs ?? '-'} ms  ${c.watermark.state}${c.watermark.reason ? ` (${c.watermark.reason})` : ''}${warning}        `,
          );
          if (i + 1 < count) await sleep(intervalMs);
        }
        if (!ctx.json) out('\n');
        return 0;
      }
      default:
        throw new CliError(`unknown command "${positionals.join(' ')}"; run "spanfeed cli --help"`);
    }
  } catch (error) {
    if (error instanceof CliError) {
      process.stderr.write(redactSecrets(`spanfeed cli: ${error.message}\n`));
      return 1;
    }
    throw error;
  }
}

/** A duration for people: `1h 2m`, `3m 4s`, `5.6 s`; `-` when unknown. */
function formatMs(ms: number | null): string {
  if (ms === null) return '-';
  const s = Math.round(ms / 1000);
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${(ms / 1000).toFixed(1)} s`;
}

/**
 * A full disk must never let the checkpoint pass an event the sink does not hold. Span
 * pipelines (the real runner, a datagen source) write into a sink whose storage sits on a
 * small real tmpfs that the test fills to ENOSPC several times, leaving a page free now
 * and then so that writes come back short (tmpfs returns a short count without an
 * error). Afterwards, for every span, the sink's state at the span's last reported
 * checkpoint must equal the source's, read both by the verifier's reader and by an
 * independent one written here. File sink, and PostgreSQL with its data directory on the
 * tmpfs.
 *
 * Mounting a tmpfs needs root (CI runs as root); elsewhere these tests are skipped.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { PipelineEvent } from '../../src/agent/pipeline.ts';
import type { Span } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';
import { LocalPostgres } from '../../src/dev/local-postgres.ts';
import { PipelineRunner, pipelineDefaults } from '../../src/pipeline/pipeline-runner.ts';
import type { Sink } from '../../src/pipeline/sink.ts';
import { FileSink } from '../../src/pipeline/sinks/file.ts';
import { PostgresSink, parsePostgresSinkUri, readPostgresTable } from '../../src/pipeline/sinks/postgres.ts';
import { DatagenSource } from '../../src/pipeline/sources/datagen.ts';
import { fileSinkState } from '../../src/verify/verifier.ts';

const isRoot = process.getuid?.() === 0;
const spans: Span[] = ['t0', 't1', 't2', 't3'].map((table) => ({ table, start: '', end: '' }));
const source = new DatagenSource({ rate: 1000, keys: 300, seed: 7 });

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Mounts a tmpfs of `sizeMiB` at a new temp dir; unmounted and removed after the test. */
function mountTmpfs(sizeMiB: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'spanfeed-full-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0777`, 'tmpfs', dir]);
  cleanups.push(() => {
    execFileSync('umount', ['-l', dir]);
    rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Fills the filesystem of `dir` to ENOSPC with a filler file, `rounds` times: each time
 * it holds the disk full for a while, freeing one page at a time (so writes come back
 * short), then removes the filler and lets the pipelines catch up.
 */
async function fillDisk(dir: string, rounds: number): Promise<void> {
  const path = join(dir, 'filler');
  const chunk = Buffer.alloc(64 * 1024, 1);
  for (let round = 0; round < rounds; round++) {
    const filler = await open(path, 'w');
    let size = 0;
    try {
      for (;;) {
        const { bytesWritten } = await filler.write(chunk, 0, chunk.length);
        size += bytesWritten;
        if (bytesWritten < chunk.length) break;
      }
    } catch {
      // ENOSPC: the disk is full.
    }
    for (let i = 0; i < 8; i++) {
      await sleep(150);
      size -= 4096;
      await filler.truncate(Math.max(0, size));
    }
    await filler.close();
    await sleep(400);
    rmSync(path, { force: true });
    await sleep(600);
  }
}

/** The source's state of a span after every event up to `uptoTs`, from `startTs`. */
async function sourceState(span: Span, startTs: bigint, uptoTs: bigint): Promise<Map<string, string>> {
  const { events } = await source.read(span, startTs, uptoTs, Number.MAX_SAFE_INTEGER);
  const state = new Map<string, string>();
  for (const event of events) {
    if (event.op === 'put') state.set(event.key, event.value ?? '');
    else state.delete(event.key);
  }
  return state;
}

/**
 * An independent reader of a file sink table: every newline-terminated line must be a
 * whole event (no line glued to a torn one); an unterminated last line is torn and
 * skipped. Returns the state at `atTs` and how many torn tails it saw.
 */
function readFileTable(dir: string, table: string, atTs: bigint): { state: Map<string, string>; tornTails: number; badLines: number } {
  const latest = new Map<string, { ts: bigint; value: string | undefined }>();
  let tornTails = 0;
  let badLines = 0;
  for (const name of readdirSync(join(dir, table)).sort()) {
    const text = readFileSync(join(dir, table, name), 'utf8');
    const lines = text.split('\n');
    if (lines.pop() !== '') tornTails++;
    for (const raw of lines) {
      let event: { key?: string; value?: string; op?: string; ts?: string };
      try {
        event = JSON.parse(raw) as typeof event;
      } catch {
        badLines++;
        continue;
      }
      const ts = BigInt(event.ts ?? '0');
      if (ts > atTs || event.key === undefined) continue;
      const before = latest.get(event.key);
      if (before !== undefined && before.ts > ts) continue;
      latest.set(event.key, { ts, value: event.op === 'delete' ? undefined : event.value });
    }
  }
  const state = new Map<string, string>();
  for (const [key, { value }] of latest) if (value !== undefined) state.set(key, value);
  return { state, tornTails, badLines };
}

interface RunResult {
  readonly startTs: bigint;
  readonly checkpoints: Map<string, bigint>;
  readonly retries: number;
  readonly failures: number;
}

/** Runs the four span pipelines into `sink` while `faults` runs, then a little longer. */
async function runPipelines(sink: Sink, faults: () => Promise<void>): Promise<RunResult> {
  const checkpoints = new Map<string, bigint>();
  let retries = 0;
  let failures = 0;
  const emit = (event: PipelineEvent): void => {
    if (event.kind === 'progress') {
      const before = checkpoints.get(event.key) ?? 0n;
      // A span's reported checkpoint never goes back.
      expect(event.checkpointTs >= before).toBe(true);
      checkpoints.set(event.key, event.checkpointTs);
    } else if (event.kind === 'retrying') retries++;
    else if (event.kind === 'failed') failures++;
  };
  const limits = { ...pipelineDefaults, intervalMs: 20, batchEventsMax: 200, stepRetriesMax: 10_000, retryBackoffMinMs: 10, retryBackoffMaxMs: 200 };
  const runner = new PipelineRunner(source, sink, (events) => events.forEach(emit), limits, pino({ level: 'silent' }));
  const startTs = BigInt(Date.now());
  runner.start();
  runner.apply(spans.flatMap((span) => [{ kind: 'prepare', span, key: spanKey(span), checkpointTs: startTs }] as const));
  await sleep(200);
  runner.apply(spans.map((span) => ({ kind: 'promote', span, key: spanKey(span), checkpointTs: startTs }) as const));
  try {
    await faults();
    // Catch up after the faults: every span's checkpoint passes the end of the faults.
    const end = BigInt(Date.now());
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && spans.some((span) => (checkpoints.get(spanKey(span)) ?? 0n) < end)) await sleep(100);
  } finally {
    await runner.close();
  }
  return { startTs, checkpoints, retries, failures };
}

describe.skipIf(!isRoot)('a full disk', () => {
  it('file sink: the checkpoint never passes a torn or lost event', async () => {
    const disk = mountTmpfs(16);
    const dir = join(disk, 'out');
    mkdirSync(dir);
    const sink = new FileSink({ dir, maxFileBytes: 256 * 1024 });
    const result = await runPipelines(sink, () => fillDisk(disk, 3));
    // The disk was really full: steps failed and were retried in place, none gave up.
    expect(result.retries).toBeGreaterThan(0);
    expect(result.failures).toBe(0);
    let tornTails = 0;
    for (const span of spans) {
      const checkpoint = result.checkpoints.get(spanKey(span)) ?? 0n;
      expect(checkpoint).toBeGreaterThan(result.startTs);
      const expected = await sourceState(span, result.startTs, checkpoint);
      expect(expected.size).toBeGreaterThan(0);
      expect(await fileSinkState(dir, span.table, checkpoint)).toEqual(expected);
      const independent = readFileTable(dir, span.table, checkpoint);
      expect(independent.badLines).toBe(0);
      expect(independent.state).toEqual(expected);
      tornTails += independent.tornTails;
    }
    // Short writes left torn tails, which every reader skipped.
    expect(tornTails).toBeGreaterThan(0);
  });

  it('postgres sink with its data directory on the full disk: the checkpoint never passes a lost event', async () => {
    const disk = mountTmpfs(160);
    const postgres = await LocalPostgres.start({ parentDir: disk });
    cleanups.push(() => postgres.stop());
    const options = parsePostgresSinkUri(postgres.url);
    const sink = new PostgresSink(options);
    const result = await runPipelines(sink, async () => {
      for (let round = 0; round < 2; round++) {
        await fillDisk(disk, 1);
        // PostgreSQL may stop for good when it cannot write its WAL: the operator frees
        // space and starts it again, as here.
        if (!postgres.running) await postgres.restart();
      }
    });
    expect(result.retries).toBeGreaterThan(0);
    expect(result.failures).toBe(0);
    for (const span of spans) {
      const checkpoint = result.checkpoints.get(spanKey(span)) ?? 0n;
      expect(checkpoint).toBeGreaterThan(result.startTs);
      const expected = await sourceState(span, result.startTs, checkpoint);
      const { rows } = await readPostgresTable(options, span.table);
      // Rows changed after the checkpoint are left out on both sides, as the verifier does.
      const copy = new Map<string, string>();
      for (const [key, row] of rows) {
        if (row.ts > checkpoint) expected.delete(key);
        else if (row.value !== undefined) copy.set(key, row.value);
      }
      expect(copy).toEqual(expected);
    }
  });
});

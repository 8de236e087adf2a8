/**
 * The `file` sink: NDJSON, one directory per table, one file per span pipeline at a time,
 * rotated by size. `file:///abs/dir[?maxFileBytes=<n>][&retainFiles=<n>][&retainHours=<h>]`.
 *
 * One event per line: `{"table","key","value","op":"put"|"delete","ts":"<decimal>"}`,
 * `key`/`value` as UTF-8 strings, or `keyBase64`/`valueBase64` when the bytes are not
 * valid UTF-8; no value on a delete. A retire after a backfill is one line too (see
 * `retireLine`). `flush` fsyncs the span's file, and the table
 * directory when a file was created in it, before it returns: only then may the
 * checkpoint pass what was written. Each pipeline writes its own files (named by span
 * hash, process and a counter), so writers on different captures never interleave lines.
 *
 * With retention on (`retainFiles` and/or `retainHours`), each closed file gets a seal and
 * closed files wholly at or below the changefeed's checkpoint are deleted, oldest first,
 * in passes off the write path: the rule is in `file-retention.ts`.
 */
import { isUtf8 } from 'node:buffer';
import { mkdir, open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Span } from '../../core/span.ts';
import { spanKey } from '../../core/span.ts';
import { spanKeyHashes } from '../../core/span-digest.ts';
import type { RetireScope, Sink, SinkContext } from '../sink.ts';
import type { ChangeEvent } from '../source.ts';
import { BoundsError, checkFileSinkDir, tableNameProblem } from '../bounds.ts';
import { BadUriError, intParam, optionalIntParam, optionalNumberParam, parseUri, rejectUnknownParams } from '../uri.ts';
import type { RetentionLimits, RetentionPolicy } from './file-retention.ts';
import { retainTableDir, retentionDefaults, retentionOn, writeSeal } from './file-retention.ts';

export interface FileSinkOptions extends RetentionPolicy {
  readonly dir: string;
  readonly maxFileBytes: number;
}

/** The query parameters of a file sink URI. */
export const fileSinkParams = ['maxFileBytes', 'retainFiles', 'retainHours'] as const;

/** Bounds of the retention settings: a million files, ten years. */
export const retainFilesMax = 1_000_000;
export const retainHoursMax = 87_600;

export function parseFileSinkUri(uri: string): FileSinkOptions {
  const url = parseUri(uri, ['file'], 'sink');
  // `file:rel` parses as /rel: only the written-out form says what it means.
  if (!uri.startsWith('file:///') || url.host !== '' || !url.pathname.startsWith('/') || url.pathname === '/') {
    throw new BadUriError(`sink uri ${JSON.stringify(uri)} must be file:///absolute/dir`);
  }
  // The URL parser resolves `..` away: the raw path is checked, so that a sink URI says
  // plainly where it writes (the capture then checks that against --file-sink-root).
  const rawPath = uri.slice('file://'.length).split(/[?#]/)[0] ?? '';
  let decoded: string;
  try {
    decoded = decodeURIComponent(rawPath);
  } catch {
    throw new BadUriError(`sink uri ${JSON.stringify(uri)} has a malformed %-escape in its path`);
  }
  if (/[\\\u0000]/.test(decoded) || decoded.split('/').some((segment) => segment === '.' || segment === '..')) {
    throw new BadUriError(`sink uri ${JSON.stringify(uri)}: the path must not contain ".", ".." segments, "\\" or NUL`);
  }
  rejectUnknownParams(url, fileSinkParams, 'file sink');
  const retainFiles = optionalIntParam(url, 'retainFiles', 0, retainFilesMax);
  const retainHours = optionalNumberParam(url, 'retainHours', 0, retainHoursMax);
  return {
    dir: fileURLToPath(`file://${url.pathname}`),
    maxFileBytes: intParam(url, 'maxFileBytes', 64 * 1024 * 1024, 1024, 2 ** 40),
    ...(retainFiles === undefined ? {} : { retainFiles }),
    ...(retainHours === undefined ? {} : { retainHours }),
  };
}

/** Only 7-bit code units: a binary string that is its own UTF-8 text. */
const asciiOnly = /^[\x00-\x7f]*$/;

/**
 * A binary string as UTF-8 text when its bytes are valid UTF-8, else undefined. An ASCII
 * one (the usual key and value) is returned as it is, without a copy of its bytes.
 */
function utf8Text(binary: string): string | undefined {
  if (asciiOnly.test(binary)) return binary;
  const bytes = Buffer.from(binary, 'latin1');
  return isUtf8(bytes) ? bytes.toString('utf8') : undefined;
}

/** Encodes a binary string as JSON fields: UTF-8 text when it is valid, else base64. */
export function encodeBytes(name: 'key' | 'value' | 'start' | 'end', binary: string): Record<string, string> {
  const text = utf8Text(binary);
  return text !== undefined ? { [name]: text } : { [`${name}Base64`]: Buffer.from(binary, 'latin1').toString('base64') };
}

/** One JSON member for a binary string: `"name":"<text>"`, or `"nameBase64":"<base64>"`. */
function bytesMember(name: 'key' | 'value', binary: string): string {
  const text = utf8Text(binary);
  return text !== undefined ? `"${name}":${JSON.stringify(text)}` : `"${name}Base64":"${Buffer.from(binary, 'latin1').toString('base64')}"`;
}

/**
 * One NDJSON line for an event, written out member by member (on the write path of every
 * event: no object per line), the same text as `JSON.stringify` of
 * `{table, key|keyBase64, op, ts, value|valueBase64}`.
 */
export function eventLine(event: ChangeEvent): string {
  let line = `{"table":${JSON.stringify(event.table)},${bytesMember('key', event.key)},"op":"${event.op}","ts":"${event.ts}"`;
  if (event.op === 'put' && event.value !== undefined) line += `,${bytesMember('value', event.value)}`;
  return `${line}}\n`;
}

/**
 * The NDJSON line of a retire: `{"table","op":"retire","start","end"?,"keep"?,"ts"}` (no
 * `end` when the span runs to the end of the key space). A reader deletes, at `ts`, every
 * key in [start, end) whose last line has a smaller ts, except the keys in `keep` (an
 * array of UTF-8 keys, or `keepBase64` when one is not valid UTF-8).
 */
export function retireLine(span: Span, beforeTs: bigint, scope?: RetireScope): string {
  const range = scope ?? span;
  const keep = scope?.keep;
  const fields: Record<string, string | string[]> = { table: span.table, op: 'retire', ...encodeBytes('start', range.start) };
  if (range.end !== '') Object.assign(fields, encodeBytes('end', range.end));
  if (keep !== undefined && keep.size > 0) {
    const bytes = [...keep].sort().map((key) => Buffer.from(key, 'latin1'));
    const texts = bytes.map((b) => b.toString('utf8'));
    if (texts.every((text, i) => Buffer.from(text, 'utf8').equals(bytes[i] as Buffer))) fields.keep = texts;
    else fields.keepBase64 = bytes.map((b) => b.toString('base64'));
  }
  fields.ts = beforeTs.toString();
  return `${JSON.stringify(fields)}\n`;
}

interface OpenFile {
  handle: FileHandle;
  readonly name: string;
  readonly tableDir: string;
  bytes: number;
  lines: number;
  /** The lowest and highest ts of every line tried, a torn one too: what the seal says. */
  minTs: bigint | undefined;
  maxTs: bigint | undefined;
  dirDirty: boolean;
  /** Written since its last fsync. */
  unsynced: boolean;
  /** Appends and flushes under way; an idle file is closed only at 0. */
  opsInFlight: number;
  lastUsedMs: number;
}

/** A closed file waiting for its seal. */
interface PendingSeal {
  readonly file: OpenFile;
  readonly closed: Promise<void>;
  readonly closedAt: number;
}

/** What one retention pass did. */
export interface RetentionPassResult {
  readonly sealed: number;
  readonly retired: number;
}

/** What a file sink reports to its host, and the clock it reads (tests replace both). */
export interface FileSinkContext extends SinkContext {
  readonly nowMs?: () => number;
  readonly retentionLimits?: Partial<RetentionLimits>;
}

let fileCounter = 0;

export class FileSink implements Sink {
  private readonly files = new Map<string, OpenFile>();
  private readonly retention: boolean;
  private readonly limits: RetentionLimits;
  private readonly nowMs: () => number;
  /** The changefeed's persisted checkpoint as last observed; nothing is retired before one is. */
  private checkpointTs: bigint | undefined;
  /** Every table directory this sink wrote to: the ones its passes look after. */
  private readonly tableDirs = new Set<string>();
  private dirCursor = 0;
  /** Per table directory, each seal's maxTs by file name. */
  private readonly seals = new Map<string, Map<string, bigint>>();
  private pendingSeals: PendingSeal[] = [];
  private pass: Promise<void> | undefined;
  private lastPassMs: number;
  private closed = false;

  constructor(
    private readonly options: FileSinkOptions,
    private readonly context: FileSinkContext = {},
  ) {
    this.retention = retentionOn(options);
    this.limits = { ...retentionDefaults, ...context.retentionLimits };
    this.nowMs = context.nowMs ?? Date.now;
    this.lastPassMs = this.nowMs();
  }

  async write(span: Span, events: readonly ChangeEvent[]): Promise<void> {
    if (events.length === 0) return;
    let minTs = (events[0] as ChangeEvent).ts;
    let maxTs = minTs;
    for (const event of events) {
      if (event.ts < minTs) minTs = event.ts;
      if (event.ts > maxTs) maxTs = event.ts;
    }
    await this.append(span, events.map(eventLine).join(''), events.length, minTs, maxTs);
  }

  async retire(span: Span, beforeTs: bigint, scope?: RetireScope): Promise<void> {
    await this.append(span, retireLine(span, beforeTs, scope), 1, beforeTs, beforeTs);
    await this.flush(span);
  }

  /**
   * The changefeed's persisted checkpoint: every event at or below it is durable in the
   * sink, over all spans. With retention on, files wholly at or below it may go.
   */
  observeCheckpoint(checkpointTs: bigint): void {
    this.checkpointTs = checkpointTs;
    this.maybePass();
  }

  private async append(span: Span, text: string, lines: number, minTs: bigint, maxTs: bigint): Promise<void> {
    let file = await this.acquire(span);
    try {
      if (file.bytes > 0 && file.bytes + text.length > this.options.maxFileBytes) {
        const full = file;
        await this.rotate(span, full);
        file = await this.acquire(span);
        full.opsInFlight--;
      }
      // Counted before the write: a short write may leave some of these lines whole.
      if (file.minTs === undefined || minTs < file.minTs) file.minTs = minTs;
      if (file.maxTs === undefined || maxTs > file.maxTs) file.maxTs = maxTs;
      file.lines += lines;
      file.unsynced = true;
      const bytes = Buffer.from(text, 'utf8');
      try {
        await writeAll(file.handle, bytes);
      } catch (error) {
        // A failed or short write leaves a torn line at the end of the file: nothing of this
        // batch counts as written, the pipeline writes it again from its last flush, and it
        // goes to a new file, so no line is ever glued to a torn one. A torn line is always
        // a file's unterminated last line, which readers skip.
        this.release(span, file);
        throw error;
      }
      file.bytes += bytes.length;
    } finally {
      file.opsInFlight--;
      file.lastUsedMs = this.nowMs();
    }
  }

  /** No more appends to `file`: it closes, and with retention on it gets its seal. */
  private release(span: Span, file: OpenFile): void {
    if (this.files.get(spanKey(span)) === file) this.files.delete(spanKey(span));
    void this.closeFile(file);
  }

  private closeFile(file: OpenFile): Promise<void> {
    const closed = file.handle.close().catch(() => undefined);
    if (!this.retention) return closed;
    if (this.pendingSeals.length >= this.limits.sealsPendingMax) {
      const dropped = this.pendingSeals.shift();
      this.context.log?.warn({ file: dropped?.file.name, sealsPendingMax: this.limits.sealsPendingMax }, 'too many seals pending; the oldest file stays unsealed and is kept');
    }
    this.pendingSeals.push({ file, closed, closedAt: this.nowMs() });
    return closed;
  }

  async flush(span: Span): Promise<void> {
    const file = this.files.get(spanKey(span));
    if (file === undefined) return;
    file.opsInFlight++;
    try {
      try {
        await file.handle.sync();
      } catch (error) {
        // After a failed fsync the written pages' fate is unknown: write them again anew.
        this.release(span, file);
        throw error;
      }
      if (file.dirDirty) {
        await syncDir(file.tableDir);
        await syncDir(this.options.dir);
        file.dirDirty = false;
      }
      file.unsynced = false;
    } finally {
      file.opsInFlight--;
      file.lastUsedMs = this.nowMs();
    }
    this.maybePass();
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.pass !== undefined) await this.pass;
    const files = [...this.files.values()];
    this.files.clear();
    await Promise.all(files.map(async (f) => this.closeFile(f)));
    if (this.retention) await this.writePendingSeals();
  }

  /**
   * Runs one retention pass now (after the one under way, if any): writes pending seals,
   * closes idle files, and retires what the rule allows. For tests and tools; the sink
   * runs passes by itself after flushes, rotations and new checkpoints.
   */
  async retainNow(): Promise<RetentionPassResult> {
    while (this.pass !== undefined) await this.pass;
    const run = this.runPass();
    this.pass = run.then(
      () => undefined,
      () => undefined,
    );
    try {
      return await run;
    } finally {
      this.pass = undefined;
      this.lastPassMs = this.nowMs();
    }
  }

  /** Starts a pass off the write path when retention is on and the last one is an interval old. */
  private maybePass(): void {
    if (!this.retention || this.closed || this.pass !== undefined) return;
    const now = this.nowMs();
    if (now - this.lastPassMs < this.limits.passIntervalMs) return;
    this.lastPassMs = now;
    this.pass = this.runPass()
      .then(
        () => undefined,
        (error: unknown) => this.context.log?.warn({ err: error, dir: this.options.dir }, 'file retention pass failed; retrying at the next one'),
      )
      .finally(() => {
        this.pass = undefined;
      });
  }

  private async runPass(): Promise<RetentionPassResult> {
    this.closeIdleFiles(this.nowMs());
    const sealed = await this.writePendingSeals();
    let retired = 0;
    const checkpointTs = this.checkpointTs;
    const dirs = [...this.tableDirs];
    if (checkpointTs === undefined || dirs.length === 0) return { sealed, retired };
    const count = Math.min(dirs.length, this.limits.tableDirsPerPassMax);
    for (let i = 0; i < count; i++) {
      const tableDir = dirs[(this.dirCursor + i) % dirs.length] as string;
      let seals = this.seals.get(tableDir);
      if (seals === undefined) this.seals.set(tableDir, (seals = new Map()));
      try {
        const result = await retainTableDir(tableDir, checkpointTs, this.options, this.limits, this.nowMs(), seals, syncDir);
        if (result.retired > 0) {
          retired += result.retired;
          this.context.filesRetired?.(result.retired);
          this.context.log?.debug({ tableDir, files: result.retired, checkpointTs }, 'files retired');
        }
      } catch (error) {
        // Never fails a write: what was not retired now is retired by a later pass.
        this.context.log?.warn({ err: error, tableDir }, 'file retention failed; retrying at the next pass');
      }
    }
    this.dirCursor = (this.dirCursor + count) % dirs.length;
    return { sealed, retired };
  }

  /**
   * A file no pipeline wrote to for `idleCloseMs`, with nothing unflushed and nothing
   * under way, is closed and sealed: a span that moved away would else keep its file open,
   * and unretirable, for as long as this sink runs. The span's next write opens a new file.
   */
  private closeIdleFiles(nowMs: number): void {
    for (const [key, file] of this.files) {
      if (file.opsInFlight > 0 || file.unsynced || file.dirDirty || nowMs - file.lastUsedMs < this.limits.idleCloseMs) continue;
      this.files.delete(key);
      void this.closeFile(file);
    }
  }

  /** Writes the seals of closed files; a seal that fails stays pending for the next pass. */
  private async writePendingSeals(): Promise<number> {
    const pending = this.pendingSeals;
    this.pendingSeals = [];
    let written = 0;
    for (let i = 0; i < pending.length; i++) {
      const { file, closed, closedAt } = pending[i] as PendingSeal;
      await closed;
      const maxTs = file.maxTs ?? 0n;
      try {
        await writeSeal(join(file.tableDir, file.name), {
          minTs: (file.minTs ?? 0n).toString(),
          maxTs: maxTs.toString(),
          lines: file.lines,
          bytes: file.bytes,
          closedAt: new Date(closedAt).toISOString(),
        });
      } catch (error) {
        this.context.log?.warn({ err: error, file: file.name }, 'sealing a closed file failed; retrying at the next pass');
        this.pendingSeals.unshift(...pending.slice(i));
        break;
      }
      this.seals.get(file.tableDir)?.set(file.name, maxTs);
      written++;
    }
    return written;
  }

  private async rotate(span: Span, file: OpenFile): Promise<void> {
    try {
      await file.handle.sync();
      if (file.dirDirty) await syncDir(file.tableDir);
      file.unsynced = false;
    } finally {
      this.release(span, file);
    }
    this.maybePass();
  }

  /**
   * The span's open file, or a new one, counted as in use before anything else can run
   * (an idle close looks at that count); the caller ends the use.
   */
  private async acquire(span: Span): Promise<OpenFile> {
    const key = spanKey(span);
    const existing = this.files.get(key);
    if (existing !== undefined) {
      existing.opsInFlight++;
      return existing;
    }
    const problem = tableNameProblem(span.table);
    if (problem !== undefined) throw new BoundsError(`the file sink cannot write table ${JSON.stringify(span.table)}: ${problem}`);
    const tableDir = join(this.options.dir, span.table);
    await mkdir(tableDir, { recursive: true });
    // A table directory replaced by a symlink out of the root after the sink was checked.
    const root = this.context.fileSinkRoot;
    if (root !== undefined && !this.tableDirs.has(tableDir)) await checkFileSinkDir(tableDir, root);
    this.tableDirs.add(tableDir);
    const [hash] = spanKeyHashes(key);
    const name = `${hash.toString(16).padStart(8, '0')}-${process.pid}-${Date.now()}-${fileCounter++}.ndjson`;
    const handle = await open(join(tableDir, name), 'a');
    const file: OpenFile = { handle, name, tableDir, bytes: 0, lines: 0, minTs: undefined, maxTs: undefined, dirDirty: true, unsynced: false, opsInFlight: 1, lastUsedMs: this.nowMs() };
    this.files.set(key, file);
    return file;
  }
}

/** A write that returned fewer bytes than asked and could not go on: the disk is full. */
export class ShortWriteError extends Error {
  override readonly name = 'ShortWriteError';
  readonly retryable = true;
}

/**
 * Writes every byte or throws. `FileHandle.write` may write fewer bytes than asked
 * without an error (a full tmpfs returns a short count): the rest is written again, and
 * a write that makes no progress is a failure, never a success.
 */
async function writeAll(handle: FileHandle, bytes: Buffer): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) {
    const { bytesWritten } = await handle.write(bytes, offset, bytes.length - offset);
    if (bytesWritten <= 0) throw new ShortWriteError(`file sink wrote ${offset} of ${bytes.length} bytes: no space left`);
    offset += bytesWritten;
  }
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

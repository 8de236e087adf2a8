/**
 * The `file` sink: NDJSON, one directory per table, one file per span pipeline at a time,
 * rotated by size. `file:///abs/dir[?maxFileBytes=<n>]`.
 *
 * One event per line: `{"table","key","value","op":"put"|"delete","ts":"<decimal>"}`,
 * `key`/`value` as UTF-8 strings, or `keyBase64`/`valueBase64` when the bytes are not
 * valid UTF-8; no value on a delete. A retire after a backfill is one line too (see
 * `retireLine`). `flush` fsyncs the span's file, and the table
 * directory when a file was created in it, before it returns: only then may the
 * checkpoint pass what was written. Each pipeline writes its own files (named by span
 * hash, process and a counter), so writers on different captures never interleave lines.
 */
import { mkdir, open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Span } from '../../core/span.ts';
import { spanKey } from '../../core/span.ts';
import { spanKeyHashes } from '../../core/span-digest.ts';
import type { Sink } from '../sink.ts';
import type { ChangeEvent } from '../source.ts';
import { BadUriError, intParam, parseUri } from '../uri.ts';

export interface FileSinkOptions {
  readonly dir: string;
  readonly maxFileBytes: number;
}

export function parseFileSinkUri(uri: string): FileSinkOptions {
  const url = parseUri(uri, ['file'], 'sink');
  if (url.host !== '' || !url.pathname.startsWith('/') || url.pathname === '/') {
    throw new BadUriError(`sink uri ${JSON.stringify(uri)} must be file:///absolute/dir`);
  }
  return { dir: fileURLToPath(`file://${url.pathname}`), maxFileBytes: intParam(url, 'maxFileBytes', 64 * 1024 * 1024, 1024, 2 ** 40) };
}

/** Encodes a binary string as JSON fields: UTF-8 text when it is valid, else base64. */
export function encodeBytes(name: 'key' | 'value' | 'start' | 'end', binary: string): Record<string, string> {
  const bytes = Buffer.from(binary, 'latin1');
  const text = bytes.toString('utf8');
  return Buffer.from(text, 'utf8').equals(bytes) ? { [name]: text } : { [`${name}Base64`]: bytes.toString('base64') };
}

/** One NDJSON line for an event. */
export function eventLine(event: ChangeEvent): string {
  const fields: Record<string, string> = { table: event.table, ...encodeBytes('key', event.key), op: event.op, ts: event.ts.toString() };
  if (event.op === 'put' && event.value !== undefined) Object.assign(fields, encodeBytes('value', event.value));
  return `${JSON.stringify(fields)}\n`;
}

/**
 * The NDJSON line of a retire: `{"table","op":"retire","start","end"?,"ts"}` (no `end`
 * when the span runs to the end of the key space). A reader deletes, at `ts`, every key
 * in [start, end) whose last line has a smaller ts.
 */
export function retireLine(span: Span, beforeTs: bigint): string {
  const fields: Record<string, string> = { table: span.table, op: 'retire', ...encodeBytes('start', span.start) };
  if (span.end !== '') Object.assign(fields, encodeBytes('end', span.end));
  fields.ts = beforeTs.toString();
  return `${JSON.stringify(fields)}\n`;
}

interface OpenFile {
  handle: FileHandle;
  bytes: number;
  dirDirty: boolean;
  tableDir: string;
}

let fileCounter = 0;

export class FileSink implements Sink {
  private readonly files = new Map<string, OpenFile>();

  constructor(private readonly options: FileSinkOptions) {}

  async write(span: Span, events: readonly ChangeEvent[]): Promise<void> {
    if (events.length === 0) return;
    await this.append(span, events.map(eventLine).join(''));
  }

  async retire(span: Span, beforeTs: bigint): Promise<void> {
    await this.append(span, retireLine(span, beforeTs));
    await this.flush(span);
  }

  private async append(span: Span, text: string): Promise<void> {
    let file = await this.fileFor(span);
    if (file.bytes > 0 && file.bytes + text.length > this.options.maxFileBytes) {
      await this.rotate(span, file);
      file = await this.fileFor(span);
    }
    const bytes = Buffer.from(text, 'utf8');
    try {
      await writeAll(file.handle, bytes);
    } catch (error) {
      // A failed or short write leaves a torn line at the end of the file: nothing of this
      // batch counts as written, the pipeline writes it again from its last flush, and it
      // goes to a new file, so no line is ever glued to a torn one. A torn line is always
      // a file's unterminated last line, which readers skip.
      this.forget(span, file);
      throw error;
    }
    file.bytes += bytes.length;
  }

  private forget(span: Span, file: OpenFile): void {
    if (this.files.get(spanKey(span)) === file) this.files.delete(spanKey(span));
    void file.handle.close().catch(() => undefined);
  }

  async flush(span: Span): Promise<void> {
    const file = this.files.get(spanKey(span));
    if (file === undefined) return;
    try {
      await file.handle.sync();
    } catch (error) {
      // After a failed fsync the written pages' fate is unknown: write them again anew.
      this.forget(span, file);
      throw error;
    }
    if (file.dirDirty) {
      await syncDir(file.tableDir);
      await syncDir(this.options.dir);
      file.dirDirty = false;
    }
  }

  async close(): Promise<void> {
    const files = [...this.files.values()];
    this.files.clear();
    await Promise.allSettled(files.map(async (f) => f.handle.close()));
  }

  private async rotate(span: Span, file: OpenFile): Promise<void> {
    try {
      await file.handle.sync();
      if (file.dirDirty) await syncDir(file.tableDir);
    } finally {
      this.forget(span, file);
    }
  }

  private async fileFor(span: Span): Promise<OpenFile> {
    const key = spanKey(span);
    const existing = this.files.get(key);
    if (existing !== undefined) return existing;
    const tableDir = join(this.options.dir, span.table);
    await mkdir(tableDir, { recursive: true });
    const [hash] = spanKeyHashes(key);
    const name = `${hash.toString(16).padStart(8, '0')}-${process.pid}-${Date.now()}-${fileCounter++}.ndjson`;
    const handle = await open(join(tableDir, name), 'a');
    const file: OpenFile = { handle, bytes: 0, dirDirty: true, tableDir };
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

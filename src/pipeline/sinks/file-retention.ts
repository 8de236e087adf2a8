/**
 * Retention of the file sink (`retainFiles`, `retainHours`): which closed files of a
 * table directory may go, the seals that say a file is closed, and the retention log
 * that says what went.
 *
 * The rule. A file of a table directory is deleted only when all of these hold:
 *   1. It is sealed: its writer closed it for good (rotated away, after a failed write,
 *      idle, or at close) and then wrote `<file>.sealed`, which holds the highest ts the
 *      file ever held. No one appends to a sealed file. A file without a seal is open, or
 *      was left by a writer that died; it is never deleted, since no reader can tell it
 *      from a file a live writer on another capture still appends to.
 *   2. It is wholly at or below the changefeed's persisted checkpoint (its seal's
 *      `maxTs` <= checkpoint): a consumer that has read up to the checkpoint has seen all
 *      of it, and no event above the checkpoint, which the changefeed may still replay or
 *      a consumer may not have read, goes with it.
 *   3. No retention setting keeps it: it is not among the newest `retainFiles` sealed
 *      files of the directory (ranked by `maxTs`), and its last write (mtime) is more than
 *      `retainHours` ago. Each setting is a promise of what stays; with both, a file goes
 *      only when neither keeps it.
 *   4. Every sealed file ranked below it went first: files retire oldest first per
 *      directory, so what went is always a prefix of the sealed files by `maxTs`.
 *
 * Before the files of a pass are deleted, one line per file `{"file","maxTs","retiredAt"}`
 * is appended to the directory's `retention.log` and fsynced. The highest `maxTs` in it
 * is the directory's *horizon*: every line above the horizon is still in the directory
 * (a file holding one would have a higher `maxTs`), while lines at or below it may be
 * gone. So a reader of the remaining files knows every change after the horizon, and a
 * key whose last line is at or below it may be stale (its later delete, put or retire may
 * have gone). That is why retiring oldest first matters: it keeps the horizon as low as
 * the settings allow, so few remaining lines fall below it.
 */
import { open, readFile, readdir, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';

/** What a sealed file's `<name>.sealed` holds (ts as decimal strings). */
export interface FileSeal {
  readonly minTs: string;
  readonly maxTs: string;
  /** Lines written (a torn last line counts: its ts is in the range). */
  readonly lines: number;
  readonly bytes: number;
  readonly closedAt: string;
}

/** A sealed data file of a table directory. */
export interface SealedFile {
  readonly name: string;
  readonly maxTs: bigint;
}

/** The retention settings of a file sink URI; both absent: keep everything. */
export interface RetentionPolicy {
  /** Keep at least the newest n sealed files per table directory. */
  readonly retainFiles?: number;
  /** Keep every file last written within this many hours. */
  readonly retainHours?: number;
}

/** Bounds of the retention pass. */
export interface RetentionLimits {
  /** At most one pass per this interval; a pass is started by a flush, a rotation or a new checkpoint. */
  readonly passIntervalMs: number;
  /** Table directories looked at per pass (round robin). */
  readonly tableDirsPerPassMax: number;
  /** Seals read from disk per table directory per pass (each is read once, then kept). */
  readonly sealReadsPerPassMax: number;
  /** Files deleted per table directory per pass. */
  readonly deletesPerPassMax: number;
  /** A file of this writer not written for this long, with nothing unflushed, is closed and sealed. */
  readonly idleCloseMs: number;
  /** Seals waiting to be written (after a failure); beyond it the oldest file is left unsealed, i.e. kept. */
  readonly sealsPendingMax: number;
}

export const retentionDefaults: RetentionLimits = {
  passIntervalMs: 1_000,
  tableDirsPerPassMax: 64,
  sealReadsPerPassMax: 1_024,
  deletesPerPassMax: 256,
  idleCloseMs: 5 * 60_000,
  sealsPendingMax: 10_000,
};

export const sealSuffix = '.sealed';
export const retentionLogName = 'retention.log';
const msPerHour = 3_600_000;

/** True when retention is on: some setting is given. */
export function retentionOn(policy: RetentionPolicy): boolean {
  return policy.retainFiles !== undefined || policy.retainHours !== undefined;
}

/** Sealed files ranked oldest first: by `maxTs`, then by name (a fixed order for ties). */
export function rankSealed(files: readonly SealedFile[]): SealedFile[] {
  return [...files].sort((a, b) => (a.maxTs < b.maxTs ? -1 : a.maxTs > b.maxTs ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * The files rules 2 to 4 let go, before ages are known: the oldest-first prefix of
 * `ranked` that is wholly at or below `checkpointTs` and outside the newest
 * `retainFiles`, at most `max` of them.
 */
export function retireCandidates(ranked: readonly SealedFile[], checkpointTs: bigint, policy: RetentionPolicy, max: number): SealedFile[] {
  const kept = policy.retainFiles ?? 0;
  const out: SealedFile[] = [];
  for (let i = 0; i < ranked.length - kept && out.length < max; i++) {
    const file = ranked[i] as SealedFile;
    if (file.maxTs > checkpointTs) break;
    out.push(file);
  }
  return out;
}

/**
 * Cuts `candidates` (oldest first) at the first file `retainHours` keeps: last written
 * less than that long before `nowMs`, or of unknown age.
 */
export function cutByAge(candidates: readonly SealedFile[], lastWriteMs: ReadonlyMap<string, number>, policy: RetentionPolicy, nowMs: number): SealedFile[] {
  if (policy.retainHours === undefined) return [...candidates];
  const oldestKeptMs = nowMs - policy.retainHours * msPerHour;
  const out: SealedFile[] = [];
  for (const file of candidates) {
    const written = lastWriteMs.get(file.name);
    if (written === undefined || written > oldestKeptMs) break;
    out.push(file);
  }
  return out;
}

/**
 * Writes `<dataPath>.sealed` whole (a temporary file renamed over), fsynced. A seal lost
 * in a crash only keeps its file; a seal is never written for a file still appended to.
 */
export async function writeSeal(dataPath: string, seal: FileSeal): Promise<void> {
  const tmp = `${dataPath}${sealSuffix}.tmp`;
  const handle = await open(tmp, 'w');
  try {
    await handle.writeFile(`${JSON.stringify(seal)}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(tmp, `${dataPath}${sealSuffix}`);
}

/** A seal's `maxTs`, or undefined when the seal is missing, torn or not one. */
export async function readSealMaxTs(sealPath: string): Promise<bigint | undefined> {
  let text: string;
  try {
    text = await readFile(sealPath, 'utf8');
  } catch {
    return undefined;
  }
  try {
    const seal = JSON.parse(text) as Partial<FileSeal>;
    return typeof seal.maxTs === 'string' && /^\d{1,20}$/.test(seal.maxTs) ? BigInt(seal.maxTs) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The retention horizon of a table directory: the highest `maxTs` its retention log
 * names, or undefined when nothing was ever retired. Read it after the data files: a
 * file retired while they were read is then covered.
 */
export async function readRetentionHorizon(tableDir: string): Promise<bigint | undefined> {
  let text: string;
  try {
    text = await readFile(join(tableDir, retentionLogName), 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  let horizon: bigint | undefined;
  // Only lines ended by a newline count: a torn last line (a crash mid-append) was never
  // fsynced, and its files were not deleted.
  for (const raw of text.slice(0, Math.max(0, text.lastIndexOf('\n'))).split('\n')) {
    if (raw === '') continue;
    let line: { maxTs?: unknown };
    try {
      line = JSON.parse(raw) as { maxTs?: unknown };
    } catch {
      continue;
    }
    if (typeof line.maxTs !== 'string' || !/^\d{1,20}$/.test(line.maxTs)) continue;
    const ts = BigInt(line.maxTs);
    if (horizon === undefined || ts > horizon) horizon = ts;
  }
  return horizon;
}

/** What one pass over a table directory did. */
export interface TablePassResult {
  /** Files this pass deleted (another writer's pass may have deleted some first). */
  readonly retired: number;
  /** False when seals were left to read: the next pass goes on. */
  readonly complete: boolean;
}

/**
 * One retention pass over one table directory, as the rule says. `seals` caches each
 * seal's `maxTs` by file name across passes (a seal never changes); names no longer in
 * the directory leave it.
 */
export async function retainTableDir(
  tableDir: string,
  checkpointTs: bigint,
  policy: RetentionPolicy,
  limits: RetentionLimits,
  nowMs: number,
  seals: Map<string, bigint>,
  syncDir: (dir: string) => Promise<void>,
): Promise<TablePassResult> {
  const names = new Set(await readdir(tableDir));
  const sealed: SealedFile[] = [];
  let reads = 0;
  let complete = true;
  const orphanSeals: string[] = [];
  for (const name of names) {
    if (!name.endsWith(`.ndjson${sealSuffix}`)) continue;
    const dataName = name.slice(0, -sealSuffix.length);
    // A seal whose file is gone is the rest of a retirement cut short by a crash.
    if (!names.has(dataName)) {
      orphanSeals.push(name);
      continue;
    }
    let maxTs = seals.get(dataName);
    if (maxTs === undefined) {
      if (reads >= limits.sealReadsPerPassMax) {
        complete = false;
        continue;
      }
      reads++;
      maxTs = await readSealMaxTs(join(tableDir, name));
      // A torn seal (a crash while it was written) leaves its file unsealed: kept.
      if (maxTs === undefined) continue;
      seals.set(dataName, maxTs);
    }
    sealed.push({ name: dataName, maxTs });
  }
  for (const name of seals.keys()) if (!names.has(name)) seals.delete(name);
  for (const name of orphanSeals.slice(0, limits.deletesPerPassMax)) await unlinkIfThere(join(tableDir, name));
  // Without every seal the order is not known: a file with an unread seal may rank lower.
  if (!complete) return { retired: 0, complete };
  let chosen = retireCandidates(rankSealed(sealed), checkpointTs, policy, limits.deletesPerPassMax);
  if (policy.retainHours !== undefined && chosen.length > 0) {
    const lastWriteMs = new Map<string, number>();
    for (const file of chosen) {
      try {
        lastWriteMs.set(file.name, (await stat(join(tableDir, file.name))).mtimeMs);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
        // Retired by another writer's pass meanwhile: gone, so it keeps nothing back.
        lastWriteMs.set(file.name, Number.NEGATIVE_INFINITY);
      }
    }
    chosen = cutByAge(chosen, lastWriteMs, policy, nowMs);
  }
  if (chosen.length === 0) return { retired: 0, complete };
  // The log first, durably: the horizon must cover a file before the file can go.
  const log = await open(join(tableDir, retentionLogName), 'a');
  let created: boolean;
  try {
    created = (await log.stat()).size === 0;
    const retiredAt = new Date(nowMs).toISOString();
    await log.write(chosen.map((f) => `${JSON.stringify({ file: f.name, maxTs: f.maxTs.toString(), retiredAt })}\n`).join(''));
    await log.sync();
  } finally {
    await log.close();
  }
  if (created) await syncDir(tableDir);
  let retired = 0;
  for (const file of chosen) {
    if (await unlinkIfThere(join(tableDir, file.name))) retired++;
    await unlinkIfThere(join(tableDir, `${file.name}${sealSuffix}`));
    seals.delete(file.name);
  }
  await syncDir(tableDir);
  return { retired, complete };
}

/** Deletes a file; true when this call deleted it, false when it was already gone. */
async function unlinkIfThere(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

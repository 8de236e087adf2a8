/**
 * Tilings: the spans of each table must cover its key range exactly once (sorted,
 * touching, no gap, no overlap). Split and merge change a table's tiling at run time, so
 * two owners can disagree about it: the persisted one (what the shell read from etcd)
 * and the one the captures hold (an operation settled but its new tiling was not
 * persisted before the owner changed). {@link adoptHeldTiling} decides, at a rebuild,
 * which one a new owner goes on with.
 *
 * Pure and O(n log n) in the spans of the tables involved.
 */
import type { CoverageProblem, Span, TableRange } from './span.ts';
import { compareSpans, endBefore, findCoverageProblem } from './span.ts';

/** Why `spans` do not tile `tables` exactly once; undefined when they do. */
export function tilingProblem(tables: readonly TableRange[], spans: Iterable<Span>): CoverageProblem | undefined {
  return findCoverageProblem(tables, spans);
}

/** True when two spans of one table share a key. */
export function spansOverlap(a: Span, b: Span): boolean {
  return a.table === b.table && endBefore(a.start, b.end) && endBefore(b.start, a.end);
}

/** True when `inner` lies inside `outer` (same table). */
export function spanInside(inner: Span, outer: { readonly start: string; readonly end: string }): boolean {
  return inner.start >= outer.start && !endBefore(outer.end, inner.end);
}

/**
 * A span the captures hold that the persisted tiling does not have, with whether some
 * capture writes it (a primary) or only prepares it.
 */
export interface HeldSpan {
  readonly span: Span;
  readonly writer: boolean;
}

/** What {@link adoptHeldTiling} decided. */
export interface AdoptedTiling {
  /** The tiling to go on with, every table's. */
  readonly spans: Span[];
  /** Per table whose tiling differs from the persisted one: its new spans (to persist). */
  readonly changed: Map<string, Span[]>;
}

/**
 * A new owner's rule for a tiling a split or merge left half-persisted.
 *
 * `desired` is the persisted tiling; `held` the spans captures hold a role in (primary
 * or secondary) that it lacks; `holdsDesired(span)` says whether any capture holds a role
 * (primary, secondary, or found stopping) in a persisted span.
 *
 * A held span is adopted when every persisted span it overlaps is held by no capture at
 * all: the operation that made it committed (its old spans were stopped before any new
 * one could write, DESIGN.md §6), so the held span is the newer tiling. The persisted
 * spans it overlaps are replaced by the adopted spans, and what they leave uncovered (a
 * half whose capture died) by new spans that start from the checkpoint like any absent
 * span. A held span that overlaps a persisted span some capture still holds is not
 * adopted: its operation had not committed (the old span may still write), so the
 * persisted span stays and the held one is stopped. Among held spans that overlap each
 * other (leftovers of an aborted operation), writers win, then the first in span order.
 *
 * The result always tiles each table exactly, and never has a new span overlap a span
 * that a capture still holds, so no key gets two writers.
 */
export function adoptHeldTiling(
  tables: readonly TableRange[],
  desired: readonly Span[],
  held: readonly HeldSpan[],
  holdsDesired: (span: Span) => boolean,
): AdoptedTiling {
  const changed = new Map<string, Span[]>();
  if (held.length === 0) return { spans: [...desired], changed };
  const desiredByTable = groupByTable(desired);
  const heldByTable = new Map<string, HeldSpan[]>();
  for (const h of held) {
    let list = heldByTable.get(h.span.table);
    if (list === undefined) heldByTable.set(h.span.table, (list = []));
    list.push(h);
  }
  const out: Span[] = [];
  for (const table of tables) {
    const tiles = desiredByTable.get(table.name) ?? [];
    const candidates = heldByTable.get(table.name);
    const adopted = candidates === undefined ? [] : chooseAdopted(table, tiles, candidates, holdsDesired);
    if (adopted.length === 0) {
      out.push(...tiles);
      continue;
    }
    const next = replaceTiles(tiles, adopted);
    // Only a tiling that is exact is taken; otherwise the persisted one stays.
    if (tilingProblem([table], next) !== undefined) {
      out.push(...tiles);
      continue;
    }
    changed.set(table.name, next);
    out.push(...next);
  }
  // Spans of tables the owner does not know stay as they were (the manager retires them).
  const known = new Set(tables.map((t) => t.name));
  for (const span of desired) if (!known.has(span.table)) out.push(span);
  return { spans: out, changed };
}

function groupByTable(spans: readonly Span[]): Map<string, Span[]> {
  const byTable = new Map<string, Span[]>();
  for (const span of spans) {
    let list = byTable.get(span.table);
    if (list === undefined) byTable.set(span.table, (list = []));
    list.push(span);
  }
  for (const list of byTable.values()) list.sort(compareSpans);
  return byTable;
}

/** The index of the first tile whose end is after `key` (tiles sorted, touching). */
function firstTileEndingAfter(tiles: readonly Span[], key: string): number {
  let low = 0;
  let high = tiles.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (endBefore((tiles[mid] as Span).end, key) || (tiles[mid] as Span).end === key) low = mid + 1;
    else high = mid;
  }
  return low;
}

/** The tiles a span overlaps. */
function overlappedTiles(tiles: readonly Span[], span: Span): Span[] {
  const found: Span[] = [];
  for (let i = firstTileEndingAfter(tiles, span.start); i < tiles.length; i++) {
    const tile = tiles[i] as Span;
    if (!spansOverlap(tile, span)) break;
    found.push(tile);
  }
  return found;
}

function chooseAdopted(table: TableRange, tiles: readonly Span[], candidates: readonly HeldSpan[], holdsDesired: (span: Span) => boolean): Span[] {
  const ordered = [...candidates].sort((a, b) => (a.writer === b.writer ? compareSpans(a.span, b.span) : a.writer ? -1 : 1));
  const adopted: Span[] = [];
  for (const { span } of ordered) {
    if (!spanInside(span, table) || !endBefore(span.start, span.end)) continue;
    if (adopted.some((other) => spansOverlap(other, span))) continue;
    const overlapped = overlappedTiles(tiles, span);
    if (overlapped.length === 0 || overlapped.some(holdsDesired)) continue;
    adopted.push(span);
  }
  return adopted.sort(compareSpans);
}

/**
 * Replaces every tile an adopted span overlaps: the adopted spans, and new spans for
 * what the replaced tiles covered that no adopted span does.
 */
function replaceTiles(tiles: readonly Span[], adopted: readonly Span[]): Span[] {
  const next: Span[] = [];
  let a = 0;
  let i = 0;
  while (i < tiles.length) {
    const tile = tiles[i] as Span;
    const first = adopted[a];
    if (first === undefined || !spansOverlap(tile, first)) {
      next.push(tile);
      i++;
      continue;
    }
    // A run of replaced tiles: extend it while the adopted spans reach further.
    const runStart = tile.start;
    let runEnd = tile.end;
    i++;
    const inRun: Span[] = [];
    while (a < adopted.length && spansOverlap({ table: tile.table, start: runStart, end: runEnd }, adopted[a] as Span)) {
      const span = adopted[a] as Span;
      inRun.push(span);
      a++;
      while (endBefore(runEnd, span.end) && i < tiles.length) {
        runEnd = (tiles[i] as Span).end;
        i++;
      }
    }
    let covered = runStart;
    for (const span of inRun) {
      if (span.start > covered) next.push({ table: tile.table, start: covered, end: span.start });
      next.push(span);
      covered = span.end;
    }
    if (covered !== runEnd && covered !== '') next.push({ table: tile.table, start: covered, end: runEnd });
  }
  return next;
}

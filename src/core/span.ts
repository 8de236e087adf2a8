/**
 * Spans: contiguous key ranges `[start, end)` of one table.
 *
 * Keys are JavaScript strings holding one byte per code unit (a "binary string"), so
 * the ordinary string order equals etcd's byte order. An empty `end` means "to the end
 * of the key space".
 */

/** A contiguous key range of one table. Immutable: spans are shared, never copied. */
export interface Span {
  readonly table: string;
  readonly start: string;
  readonly end: string;
}

/** The key range a table covers; its spans must tile it exactly. */
export interface TableRange {
  readonly name: string;
  readonly start: string;
  readonly end: string;
}

/**
 * A span's identity as a string, unique per (table, start, end). Table names never
 * contain NUL (the shell validates them); the start's length makes the rest unambiguous
 * even for keys holding NUL bytes.
 */
export function spanKey(span: Span): string {
  return `${span.table}\u0000${span.start.length}:${span.start}${span.end}`;
}

/** The key just after every key starting with `prefix` ('' when there is none). */
export function prefixEnd(prefix: string): string {
  for (let i = prefix.length - 1; i >= 0; i--) {
    const code = prefix.charCodeAt(i);
    if (code < 0xff) return prefix.slice(0, i) + String.fromCharCode(code + 1);
  }
  return '';
}

/** True when key `a` sorts before key `b`, where `''` as an end means +infinity. */
export function endBefore(a: string, b: string): boolean {
  if (a === '') return false;
  if (b === '') return true;
  return a < b;
}

/** Orders spans by table, then start, then end. */
export function compareSpans(a: Span, b: Span): number {
  if (a.table !== b.table) return a.table < b.table ? -1 : 1;
  if (a.start !== b.start) return a.start < b.start ? -1 : 1;
  if (a.end === b.end) return 0;
  return endBefore(a.end, b.end) ? -1 : 1;
}

/** A readable form for logs and errors: `table[start,end)`. */
export function formatSpan(span: Span): string {
  return `${span.table}[${JSON.stringify(span.start)},${span.end === '' ? '+inf' : JSON.stringify(span.end)})`;
}

/**
 * Splits a table's range at the given interior boundaries (sorted, strictly inside the
 * range). Neighbouring spans share the boundary string, which keeps memory per span low.
 */
export function splitTable(table: TableRange, boundaries: readonly string[]): Span[] {
  const spans: Span[] = [];
  let start = table.start;
  for (const boundary of boundaries) {
    if (!(boundary > start) || !endBefore(boundary, table.end)) {
      throw new RangeError(`split boundary ${JSON.stringify(boundary)} is not inside ${table.name} after ${JSON.stringify(start)}`);
    }
    spans.push({ table: table.name, start, end: boundary });
    start = boundary;
  }
  spans.push({ table: table.name, start, end: table.end });
  return spans;
}

/** Why a set of spans does not tile its table's range exactly. */
export type CoverageProblem =
  | { readonly kind: 'gap'; readonly table: string; readonly after: string; readonly before: string }
  | { readonly kind: 'overlap'; readonly table: string; readonly at: string }
  | { readonly kind: 'outside'; readonly table: string; readonly span: Span }
  | { readonly kind: 'unknown-table'; readonly table: string };

/**
 * Checks that `spans` tile every table of `tables` exactly (sorted, touching, no gaps,
 * no overlaps) and lie in no other table. Returns the first problem found, or undefined.
 * Sorts a copy: O(n log n), so callers run it only when the set of spans changed.
 */
export function findCoverageProblem(tables: readonly TableRange[], spans: Iterable<Span>): CoverageProblem | undefined {
  const byTable = new Map<string, Span[]>();
  for (const table of tables) byTable.set(table.name, []);
  for (const span of spans) {
    const list = byTable.get(span.table);
    if (list === undefined) return { kind: 'unknown-table', table: span.table };
    list.push(span);
  }
  for (const table of tables) {
    const list = byTable.get(table.name) ?? [];
    list.sort(compareSpans);
    let covered = table.start;
    let first = true;
    for (const span of list) {
      if (span.start < table.start || endBefore(table.end, span.end)) {
        return { kind: 'outside', table: table.name, span };
      }
      if (first ? span.start !== table.start : span.start > covered) {
        return { kind: 'gap', table: table.name, after: covered, before: span.start };
      }
      if (!first && (span.start < covered || covered === '')) {
        return { kind: 'overlap', table: table.name, at: span.start };
      }
      covered = span.end;
      first = false;
    }
    if (first || covered !== table.end) {
      return { kind: 'gap', table: table.name, after: covered, before: table.end };
    }
  }
  return undefined;
}

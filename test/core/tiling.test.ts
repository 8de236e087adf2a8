/**
 * The tiling rules: the exact-once check, and a new owner's choice between the persisted
 * tiling and the one the captures hold after a split or merge (tiling.ts).
 */
import { describe, expect, it } from 'vitest';
import type { Span, TableRange } from '../../src/core/span.ts';
import { spanKey, splitTable } from '../../src/core/span.ts';
import { adoptHeldTiling, spanInside, spansOverlap, tilingProblem } from '../../src/core/tiling.ts';

const t: TableRange = { name: 't', start: 'a', end: '' };
const u: TableRange = { name: 'u', start: 'a', end: 'z' };
const sp = (start: string, end: string, table = 't'): Span => ({ table, start, end });
const desired = [...splitTable(t, ['g', 'n']), ...splitTable(u, ['m'])];
const nobody = (): boolean => false;

describe('tiling check', () => {
  it('finds gaps and overlaps, and accepts an exact tiling', () => {
    expect(tilingProblem([t, u], desired)).toBeUndefined();
    expect(tilingProblem([t], [sp('a', 'g'), sp('h', '')])).toEqual({ kind: 'gap', table: 't', after: 'g', before: 'h' });
    expect(tilingProblem([t], [sp('a', 'g'), sp('f', '')])).toEqual({ kind: 'overlap', table: 't', at: 'f' });
    expect(spansOverlap(sp('a', 'g'), sp('f', ''))).toBe(true);
    expect(spansOverlap(sp('a', 'g'), sp('g', ''))).toBe(false);
    expect(spansOverlap(sp('a', 'g'), sp('a', 'g', 'u'))).toBe(false);
    expect(spanInside(sp('b', 'c'), t)).toBe(true);
    expect(spanInside(sp('b', ''), u)).toBe(false);
  });
});

describe('adoptHeldTiling', () => {
  it('keeps the persisted tiling when nothing else is held', () => {
    expect(adoptHeldTiling([t, u], desired, [], nobody)).toEqual({ spans: desired, changed: new Map() });
  });

  it('adopts a finished split whose old span nobody holds', () => {
    const held = [{ span: sp('a', 'c'), writer: true }, { span: sp('c', 'g'), writer: false }];
    const result = adoptHeldTiling([t, u], desired, held, nobody);
    expect(result.changed).toEqual(new Map([['t', [sp('a', 'c'), sp('c', 'g'), sp('g', 'n'), sp('n', '')]]]));
    expect(tilingProblem([t, u], result.spans)).toBeUndefined();
  });

  it('adopts a finished merge, and fills what no held span covers with new spans', () => {
    // [g,n) and [n,+inf) merged into [g,+inf)... but only [g,p) is held: [p,+inf) is new.
    const result = adoptHeldTiling([t, u], desired, [{ span: sp('g', 'p'), writer: true }], nobody);
    expect(result.changed.get('t')).toEqual([sp('a', 'g'), sp('g', 'p'), sp('p', '')]);
    expect(tilingProblem([t, u], result.spans)).toBeUndefined();
  });

  it('keeps a persisted span some capture still holds, and so does not adopt what overlaps it', () => {
    const holds = (span: Span): boolean => spanKey(span) === spanKey(sp('a', 'g'));
    const result = adoptHeldTiling([t, u], desired, [{ span: sp('a', 'c'), writer: false }, { span: sp('c', 'g'), writer: false }], holds);
    expect(result.changed.size).toBe(0);
    expect(result.spans).toEqual(desired);
  });

  it('among overlapping held spans, a writer wins; spans outside the tables are ignored', () => {
    const held = [
      { span: sp('a', 'n'), writer: false },
      { span: sp('c', 'g'), writer: true },
      { span: sp('b', 'c', 'nope'), writer: true },
    ];
    const result = adoptHeldTiling([t, u], desired, held, nobody);
    expect(result.changed.get('t')).toEqual([sp('a', 'c'), sp('c', 'g'), sp('g', 'n'), sp('n', '')]);
    expect(tilingProblem([t, u], result.spans)).toBeUndefined();
  });

  it('a held span across two persisted spans replaces both', () => {
    const result = adoptHeldTiling([u], splitTable(u, ['f', 'm', 's']), [{ span: sp('f', 's', 'u'), writer: true }], nobody);
    expect(result.changed.get('u')).toEqual([sp('a', 'f', 'u'), sp('f', 's', 'u'), sp('s', 'z', 'u')]);
  });
});

/**
 * The span order the API pages through: random adds and removals (few and many between
 * reads, so both the splice and the merge path run), each read checked against a sort of
 * what is indexed, and pages with cursors, table, and filters against a brute force.
 */
import { describe, expect, it } from 'vitest';
import { SeededRandom } from '../../src/core/rng.ts';
import type { Span } from '../../src/core/span.ts';
import { SpanOrder, compareSpans } from '../../src/core/span-order.ts';

interface Item {
  readonly span: Span;
  readonly mark: number;
}

function randomSpan(rng: SeededRandom): Span {
  const key = (): string => (rng.chance(0.1) ? '' : String.fromCharCode(97 + rng.int(4)).repeat(1 + rng.int(3)));
  return { table: `t${rng.int(3)}`, start: key(), end: key() };
}

/** Every page of a query, following cursors, with the pages' sizes. */
function allPages(order: SpanOrder<Item>, table: string | undefined, keep: ((item: Item) => boolean) | undefined, limit: number, scanMax: number): { items: Item[]; pages: number } {
  const items: Item[] = [];
  let after: Span | undefined;
  let pages = 0;
  for (;;) {
    const page = order.page({ after, table, keep, limit, scanMax });
    expect(page.items.length).toBeLessThanOrEqual(limit);
    items.push(...page.items);
    pages++;
    if (page.next === undefined) return { items, pages };
    expect(pages).toBeLessThan(10_000);
    after = page.next;
  }
}

describe('SpanOrder', () => {
  it('is the sorted set of what is indexed under random adds and removals', () => {
    for (let seed = 1; seed <= 8; seed++) {
      const rng = new SeededRandom(seed);
      const order = new SpanOrder<Item>();
      const held = new Set<Item>();
      for (let round = 0; round < 40; round++) {
        // Sometimes a few changes between reads (splices), sometimes many (a merge).
        const changes = rng.chance(0.3) ? 100 + rng.int(200) : rng.int(10);
        for (let c = 0; c < changes; c++) {
          if (held.size > 0 && rng.chance(0.4)) {
            const item = rng.pick([...held]);
            order.remove(item);
            held.delete(item);
          } else {
            const item = { span: randomSpan(rng), mark: rng.int(5) };
            order.add(item);
            held.add(item);
          }
        }
        expect(order.size).toBe(held.size);
        const expected = [...held].sort((a, b) => compareSpans(a.span, b.span));
        const actual = order.toArray();
        expect(actual.map((i) => i.span)).toEqual(expected.map((i) => i.span));
        expect(new Set(actual)).toEqual(held);
      }
    }
  });

  it('pages by cursor with table and filters, each span once, in order, within the scan bound', () => {
    for (let seed = 1; seed <= 5; seed++) {
      const rng = new SeededRandom(seed);
      const order = new SpanOrder<Item>();
      const held: Item[] = [];
      const keys = new Set<string>();
      while (held.length < 300) {
        const span = randomSpan(rng);
        const key = JSON.stringify(span);
        if (keys.has(key)) continue;
        keys.add(key);
        const item = { span, mark: rng.int(5) };
        held.push(item);
        order.add(item);
      }
      held.sort((a, b) => compareSpans(a.span, b.span));
      for (const table of [undefined, 't0', 't2', 'nope']) {
        for (const keep of [undefined, (item: Item) => item.mark === 1]) {
          for (const [limit, scanMax] of [[1000, 100_000], [7, 100_000], [7, 3], [1, 1]] as const) {
            const want = held.filter((i) => (table === undefined || i.span.table === table) && (keep === undefined || keep(i)));
            const { items, pages } = allPages(order, table, keep, limit, scanMax);
            expect(items).toEqual(want);
            if (scanMax >= held.length && limit >= want.length) expect(pages).toBe(1);
          }
        }
      }
      // A cursor at a span no longer indexed continues after where it was.
      const middle = held[150] as Item;
      order.remove(middle);
      expect(order.page({ after: middle.span, limit: 1, scanMax: 10 }).items).toEqual([held[151]]);
    }
  });
});

import { describe, expect, it } from 'vitest';
import { FakeOwner, a, b, keyA } from './fake-owner.ts';
import { Agent } from '../../src/agent/agent.ts';
import { OwnerGate, admitAdds, spanInsideTable } from '../../src/agent/owner-gate.ts';
import type { AddSpanRequest } from '../../src/core/messages.ts';
import type { Span, TableRange } from '../../src/core/span.ts';
import { spanKey } from '../../src/core/span.ts';

const table: TableRange = { name: 't', start: 'a', end: 'z' };
const tables = new Map([[table.name, table]]);
const add = (span: Span): AddSpanRequest => ({ span, secondary: false, checkpointTs: 1n });
const nothingHeld = { count: 0, has: () => false };

describe('owner gate: only the owner seen in etcd is heard', () => {
  it('refuses every message before the capture has seen any owner, asking for a bounded re-read', () => {
    const gate = new OwnerGate({ verifyIntervalMs: 100 });
    expect(gate.check({ from: 'o', ownerRevision: 5n }, 1_000)).toEqual({ kind: 'refuse', reason: 'unverified-owner', verify: true });
    expect(gate.check({ from: 'o', ownerRevision: 5n }, 1_050)).toEqual({ kind: 'refuse', reason: 'unverified-owner', verify: false });
    expect(gate.check({ from: 'o', ownerRevision: 5n }, 1_100)).toEqual({ kind: 'refuse', reason: 'unverified-owner', verify: true });
  });

  it('accepts the owner at its revision, refuses a forger at the same revision and anyone at a higher one', () => {
    const gate = new OwnerGate({ verifyIntervalMs: 100 });
    expect(gate.observe('o', 5n)).toBe(true);
    expect(gate.check({ from: 'o', ownerRevision: 5n }, 0)).toEqual({ kind: 'accept' });
    expect(gate.check({ from: 'mallory', ownerRevision: 5n }, 0)).toEqual({ kind: 'refuse', reason: 'forged-owner', verify: false });
    // The forged revision of issue 10: never adopted, however high.
    expect(gate.check({ from: 'mallory', ownerRevision: 1_000_000n }, 0)).toMatchObject({ kind: 'refuse', reason: 'unverified-owner' });
    expect(gate.check({ from: 'o', ownerRevision: 6n }, 0)).toMatchObject({ kind: 'refuse', reason: 'unverified-owner' });
    expect(gate.owner).toEqual({ id: 'o', revision: 5n });
  });

  it('moves to a new owner only when etcd shows it, then refuses the deposed one', () => {
    const gate = new OwnerGate();
    gate.observe('old', 5n);
    // The new owner's first heartbeat arrives before the watch saw its key.
    expect(gate.check({ from: 'new', ownerRevision: 9n }, 0)).toEqual({ kind: 'refuse', reason: 'unverified-owner', verify: true });
    expect(gate.observe('new', 9n)).toBe(true);
    // Its resend gets through; the deposed owner is stale.
    expect(gate.check({ from: 'new', ownerRevision: 9n }, 10)).toEqual({ kind: 'accept' });
    expect(gate.check({ from: 'old', ownerRevision: 5n }, 10)).toEqual({ kind: 'refuse', reason: 'stale-owner', verify: false });
    // A late snapshot of the old election changes nothing.
    expect(gate.observe('old', 5n)).toBe(false);
    expect(gate.owner).toEqual({ id: 'new', revision: 9n });
  });
});

describe('owner gate: adds only inside the changefeed tables', () => {
  it('knows a span inside a table from one outside it', () => {
    expect(spanInsideTable({ table: 't', start: 'a', end: 'z' }, table)).toBe(true);
    expect(spanInsideTable({ table: 't', start: 'b', end: 'c' }, table)).toBe(true);
    expect(spanInsideTable({ table: 't', start: '', end: 'c' }, table)).toBe(false);
    expect(spanInsideTable({ table: 't', start: 'b', end: '' }, table)).toBe(false);
    expect(spanInsideTable({ table: 't', start: 'b', end: 'zz' }, table)).toBe(false);
    expect(spanInsideTable({ table: 't', start: 'c', end: 'b' }, table)).toBe(false);
    expect(spanInsideTable({ table: 't', start: 'c', end: 'c' }, table)).toBe(false);
    expect(spanInsideTable({ table: 'u', start: 'b', end: 'c' }, table)).toBe(false);
    const open: TableRange = { name: 't', start: 'm', end: '' };
    expect(spanInsideTable({ table: 't', start: 'x', end: '' }, open)).toBe(true);
    expect(spanInsideTable({ table: 't', start: 'x', end: 'y' }, open)).toBe(true);
    expect(spanInsideTable({ table: 't', start: 'a', end: '' }, open)).toBe(false);
  });

  it('refuses a forged table and a span past its table, admits the rest', () => {
    const forged: Span = { table: '../forged', start: 'a', end: 'b' };
    const past: Span = { table: 't', start: 'y', end: '\u00ff' };
    const out = admitAdds([add(forged), add(a), add(past), add(b)], tables, nothingHeld, 10);
    expect(out.admitted.map((x) => x.span)).toEqual([a, b]);
    expect(out.refused).toEqual([
      { span: forged, reason: 'outside-tables' },
      { span: past, reason: 'outside-tables' },
    ]);
  });

  it('admits an add of a span it runs even when its table is gone (a promotion), and refuses a restart', () => {
    const gone: Span = { table: 'gone', start: 'a', end: 'b' };
    const running = { count: 1, has: (key: string) => key === spanKey(gone) };
    expect(admitAdds([add(gone)], tables, running, 10)).toEqual({ admitted: [add(gone)], refused: [] });
    expect(admitAdds([add(gone)], tables, nothingHeld, 10).refused).toEqual([{ span: gone, reason: 'outside-tables' }]);
  });

  it('bounds the spans a capture holds: new ones past the bound are refused, held ones cost nothing', () => {
    const held = { count: 2, has: (key: string) => key === keyA };
    const c1: Span = { table: 't', start: 'c', end: 'd' };
    const c2: Span = { table: 't', start: 'd', end: 'e' };
    const out = admitAdds([add(a), add(c1), add(c1), add(c2)], tables, held, 3);
    expect(out.admitted.map((x) => spanKey(x.span))).toEqual([keyA, spanKey(c1), spanKey(c1)]);
    expect(out.refused).toEqual([{ span: c2, reason: 'capture-full' }]);
  });

  it('20,000 forged adds start nothing', () => {
    const adds = Array.from({ length: 20_000 }, (_, i) => add({ table: '../forged', start: `k${i}`, end: `k${i}~` }));
    const out = admitAdds(adds, tables, nothingHeld, 1_000_000);
    expect(out.admitted).toEqual([]);
    expect(out.refused).toHaveLength(20_000);
  });
});

describe('agent: refused adds', () => {
  it('answers a refused add as stopped, so the owner aborts it instead of resending, and starts nothing for it', () => {
    const owner = new FakeOwner();
    const agent = new Agent({ captureId: 'cap', captureEpoch: 77n, changefeed: 'cf', changefeedEpoch: 1n, statusesPerMessageMax: 16 });
    const removed: Span = { table: 'gone', start: 'a', end: 'b' };
    const out = agent.handleMessage(owner.dispatch([add(a)]), [removed]);
    expect(out.commands).toEqual([{ kind: 'prepare', span: a, key: keyA, checkpointTs: 1n }]);
    expect(out.outbox[0]?.statuses.map((s) => [s.span.table, s.state])).toEqual([
      ['t', 'preparing'],
      ['gone', 'stopped'],
    ]);
    owner.ack = out.outbox.at(-1)?.header.seq ?? 0;
    // The owner's heartbeat asks again: still stopped (the set aborts the add).
    const again = agent.handleMessage(owner.heartbeat([removed]));
    expect(again.outbox[0]?.statuses.find((s) => s.span.table === 'gone')?.state).toBe('stopped');
    owner.ack = again.outbox.at(-1)?.header.seq ?? 0;
    // Once the capture admits it (its copy of the tables caught up), a newer add starts it.
    const later = agent.handleMessage(owner.dispatch([add(removed)]));
    expect(later.commands).toEqual([{ kind: 'prepare', span: removed, key: spanKey(removed), checkpointTs: 1n }]);
    // A span held is left as it is; the owner removes it if unwanted.
    const held = agent.handleMessage(owner.dispatch([add(b)]), [a]);
    expect(held.outbox[0]?.statuses.find((s) => s.span.start === 'a')?.state).toBe('preparing');
  });
});

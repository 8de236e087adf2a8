/**
 * The changefeed lifecycle's rules: which state allows which change, epochs, backfill
 * revisions and incremental bounds, and when a run's failure must still be written.
 */
import { describe, expect, it } from 'vitest';
import { failRun, pause, resume, update, updateTables } from '../../src/core/changefeed-lifecycle.ts';
import type { LifecycleView } from '../../src/core/changefeed-lifecycle.ts';

const normal: LifecycleView = { state: 'normal', epoch: 7n, tables: [{ name: 'a', backfillTs: 50n }, { name: 'b' }] };
const failed: LifecycleView = { ...normal, state: 'failed' };

describe('changefeed lifecycle', () => {
  it('pauses a normal or failed changefeed once', () => {
    expect(pause('cf', normal)).toEqual({ ok: true, next: { ...normal, state: 'paused' } });
    expect(pause('cf', failed)).toMatchObject({ ok: true, next: { state: 'paused', epoch: 7n } });
    expect(pause('cf', { ...normal, state: 'paused' })).toMatchObject({ ok: false, kind: 'conflict', code: 'already-paused' });
  });

  it('resumes as a new epoch, refusing a running changefeed', () => {
    expect(resume('cf', normal, 100n)).toMatchObject({ ok: false, kind: 'conflict', code: 'not-paused' });
    expect(resume('cf', failed, 100n)).toEqual({ ok: true, next: { ...failed, state: 'normal', epoch: 8n } });
  });

  it('a resume with backfill copies every table again at its revision, never past the target', () => {
    expect(resume('cf', failed, 100n, { atTs: 200n })).toEqual({
      ok: true,
      next: { ...failed, state: 'normal', epoch: 8n, tables: [{ name: 'a', backfillTs: 200n }, { name: 'b', backfillTs: 200n }] },
    });
    expect(resume('cf', { ...failed, targetTs: 150n }, 100n, { atTs: 200n })).toMatchObject({ ok: false, kind: 'conflict', code: 'past-target' });
  });

  it('an incremental backfill needs every table whole in the sink as of the checkpoint, and a bound at most the checkpoint', () => {
    const whole: LifecycleView = { ...failed, tables: [{ name: 'a', backfillTs: 50n }, { name: 'b', backfillTs: 80n }] };
    expect(resume('cf', whole, 100n, { atTs: 200n, sinceTs: 100n })).toEqual({
      ok: true,
      next: { ...whole, state: 'normal', epoch: 8n, tables: [{ name: 'a', backfillTs: 200n, backfillSinceTs: 100n }, { name: 'b', backfillTs: 200n, backfillSinceTs: 100n }] },
    });
    expect(resume('cf', whole, 100n, { atTs: 200n, sinceTs: 101n })).toMatchObject({ ok: false, kind: 'invalid', message: expect.stringMatching(/above the changefeed's checkpoint 100/) });
    // b was never backfilled: the sink lacks its keys from before the start.
    expect(resume('cf', failed, 100n, { atTs: 200n, sinceTs: 90n })).toMatchObject({ ok: false, kind: 'invalid', message: expect.stringMatching(/table b was never backfilled/) });
    // a's backfill at 120 has not finished below the checkpoint 100.
    const copying: LifecycleView = { ...failed, tables: [{ name: 'a', backfillTs: 120n }] };
    expect(resume('cf', copying, 100n, { atTs: 200n, sinceTs: 90n })).toMatchObject({ ok: false, kind: 'invalid', message: expect.stringMatching(/table a has a backfill at 120/) });
    // A full resume after an incremental one drops the bound.
    const incremental: LifecycleView = { ...failed, tables: [{ name: 'a', backfillTs: 50n, backfillSinceTs: 40n }] };
    expect(resume('cf', incremental, 100n, { atTs: 200n })).toMatchObject({ ok: true, next: { tables: [{ name: 'a', backfillTs: 200n }] } });
  });

  it('a table update keeps the backfill of tables it keeps and backfills the added ones when asked', () => {
    expect(updateTables(normal, [{ name: 'a' }, { name: 'c' }], 300n)).toEqual({
      ok: true,
      next: { ...normal, tables: [{ name: 'a', backfillTs: 50n }, { name: 'c', backfillTs: 300n }] },
      removed: ['b'],
    });
    expect(updateTables(normal, [{ name: 'a' }, { name: 'c' }])).toMatchObject({ ok: true, next: { tables: [{ name: 'a', backfillTs: 50n }, { name: 'c' }] } });
    expect(updateTables({ ...normal, targetTs: 250n }, [{ name: 'c' }], 300n)).toMatchObject({ ok: false, code: 'past-target' });
  });

  it('an update turns the split policy on or off alone, keeping the very same tables, in any state', () => {
    const on = update(normal, { autoSplit: true });
    expect(on).toEqual({ ok: true, next: { ...normal, autoSplit: true }, removed: [] });
    // The same table objects: nothing about them (boundaries, backfills, spans) is re-derived.
    if (!on.ok) throw new Error('refused');
    expect(on.next.tables).toBe(normal.tables);
    const off = update(on.next, { autoSplit: false });
    expect(off).toEqual({ ok: true, next: { ...normal, autoSplit: false }, removed: [] });
    if (!off.ok) throw new Error('refused');
    expect(off.next.tables).toBe(normal.tables);
    expect(update({ ...normal, state: 'paused' }, { autoSplit: true })).toMatchObject({ ok: true, next: { state: 'paused', epoch: 7n, autoSplit: true } });
    expect(update(failed, { autoSplit: true })).toMatchObject({ ok: true, next: { state: 'failed', epoch: 7n, autoSplit: true } });
  });

  it('an update with tables and autoSplit does both; one without autoSplit keeps the policy as it was', () => {
    expect(update(normal, { tables: [{ name: 'a' }, { name: 'c' }], autoSplit: true, backfillAtTs: 300n })).toEqual({
      ok: true,
      next: { ...normal, autoSplit: true, tables: [{ name: 'a', backfillTs: 50n }, { name: 'c', backfillTs: 300n }] },
      removed: ['b'],
    });
    expect(update({ ...normal, autoSplit: true }, { tables: [{ name: 'a' }] })).toMatchObject({ ok: true, next: { autoSplit: true, tables: [{ name: 'a', backfillTs: 50n }] }, removed: ['b'] });
    // The table rules still hold with autoSplit beside them.
    expect(update({ ...normal, targetTs: 250n }, { tables: [{ name: 'c' }], autoSplit: true, backfillAtTs: 300n })).toMatchObject({ ok: false, code: 'past-target' });
  });

  it('an update that asks for nothing, or for a backfill without tables, is refused', () => {
    expect(update(normal, {})).toMatchObject({ ok: false, kind: 'invalid', message: 'an update needs "tables", "autoSplit" or both' });
    expect(update(normal, { autoSplit: true, backfillAtTs: 300n })).toMatchObject({ ok: false, kind: 'invalid', message: expect.stringMatching(/backfill goes with "tables"/) });
  });

  it('a run failure is written only over the normal info of that run', () => {
    expect(failRun(normal, 7n)).toEqual({ kind: 'write', next: { ...normal, state: 'failed' } });
    expect(failRun(normal, 6n)).toEqual({ kind: 'ended' });
    expect(failRun({ ...normal, state: 'paused' }, 7n)).toEqual({ kind: 'ended' });
    expect(failRun(undefined, 7n)).toEqual({ kind: 'ended' });
  });
});

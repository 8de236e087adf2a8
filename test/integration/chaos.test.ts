/**
 * The chaos soak (`scripts/chaos.ts`) for 60 seconds with seed 1: real processes, a
 * three-member metadata etcd whose leader is killed, captures killed, stopped, drained,
 * changefeeds paused and spans moved; no checkpoint may regress, every changefeed must
 * catch up, both sinks must equal the upstream at their checkpoints, no capture may
 * exit on its own.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));

it('survives 60 seconds of chaos with nothing lost, regressed or crashed', async () => {
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/chaos.ts', '--seconds', '60', '--seed', '1'], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
  });
  // The soak kills its own processes on SIGINT; a test that times out must not leave it.
  const timer = setTimeout(() => child.kill('SIGINT'), 220_000);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  const last = stdout.trim().split('\n').at(-1) ?? '';
  let summary: Record<string, unknown>;
  try {
    summary = JSON.parse(last) as Record<string, unknown>;
  } catch {
    throw new Error(`no JSON summary (exit ${code}):\n${stdout}\n${stderr.slice(-5_000)}`);
  }
  const failures = {
    checkpointRegressions: summary.checkpointRegressions,
    persistedHistoryRegressions: summary.persistedHistoryRegressions,
    checkpointAboveResolved: summary.checkpointAboveResolved,
    catchUpFailures: summary.catchUpFailures,
    failedChangefeeds: summary.failedChangefeeds,
    missing: summary.missing,
    mismatched: summary.mismatched,
    extra: summary.extra,
    unexpectedExits: summary.unexpectedExits,
    unexpectedEtcdExits: summary.unexpectedEtcdExits,
    captureStartFailures: summary.captureStartFailures,
    pausedLeftOver: summary.pausedLeftOver,
    writerErrors: summary.writerErrors,
    error: summary.error,
  };
  expect({ failures, findings: summary.findings, tempDir: summary.tempDir }).toEqual({
    failures: {
      checkpointRegressions: 0, persistedHistoryRegressions: 0, checkpointAboveResolved: 0, catchUpFailures: 0, failedChangefeeds: 0, missing: 0, mismatched: 0, extra: 0,
      unexpectedExits: 0, unexpectedEtcdExits: 0, captureStartFailures: 0, pausedLeftOver: 0, writerErrors: 0, error: null,
    },
    findings: [],
    tempDir: null,
  });
  expect(summary.keysChecked as number).toBeGreaterThan(1_000);
  expect(code).toBe(0);
}, 240_000);

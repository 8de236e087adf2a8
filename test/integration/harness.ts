/**
 * The integration tests' names for the local cluster processes, and the `spanfeed cli`
 * run they share.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export { LocalCapture as TestCapture, LocalEtcd as TestEtcd, api, apiWith, callAny, freePort, ownerAmong, waitFor } from '../../src/dev/local-cluster.ts';
export type { ApiAnswer, ApiCallOptions, ChangefeedView, SpanPage, SpanView } from '../../src/dev/local-cluster.ts';

const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));

/** What one `spanfeed cli` run printed, and its exit status (null: ended by a signal). */
export interface CliRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `spanfeed cli --server <serverUrl> ...args` as its own process, to its exit. */
export function runCli(serverUrl: string, ...args: string[]): Promise<CliRun> {
  return runCliWith({}, serverUrl, ...args);
}

/** {@link runCli} with variables set over the test's environment (`SPANFEED_TOKEN`, `SPANFEED_CA`, ...). */
export function runCliWith(env: Record<string, string>, serverUrl: string, ...args: string[]): Promise<CliRun> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [bin, 'cli', '--server', serverUrl, ...args], { env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('exit', (status) => resolve({ status, stdout, stderr }));
  });
}

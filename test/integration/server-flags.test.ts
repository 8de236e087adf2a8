import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { HttpApi } from '../../src/api/http-api.ts';
import { createRootLogger } from '../../src/log.ts';
import { Capture, StartError } from '../../src/server/capture.ts';
import { serverDefaults } from '../../src/server/server-config.ts';
import type { ServerConfig } from '../../src/server/server-config.ts';
import { TestEtcd, freePort } from './harness.ts';

const bin = fileURLToPath(new URL('../../bin/spanfeed', import.meta.url));
const run = (...args: string[]): { status: number | null; stdout: string; stderr: string } => {
  const result = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', env: { ...process.env, SPANFEED_ETCD: '' } });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
};

describe('spanfeed executable', () => {
  it('prints its version and help', () => {
    expect(run('--version')).toMatchObject({ status: 0, stdout: expect.stringMatching(/^\d+\.\d+\.\d+\n$/) });
    expect(run('--help').stdout).toContain('spanfeed server');
    expect(run('server', '--help').stdout).toContain('--lease-ttl-s');
  });

  it('rejects bad flags with a clear message and exit code 2', () => {
    const cases: [string[], RegExp][] = [
      [['server', '--lease-ttl-s', '1'], /--lease-ttl-s must be an integer from 2/],
      [['server', '--http', 'nope'], /--http must be host:port/],
      [['server', '--log-level', 'loud'], /--log-level must be one of/],
      [['server', '--bogus'], /Unknown option '--bogus'/],
      [['server', '--advertise-host', 'no spaces'], /--advertise-host must be a host name/],
      [['server', '--pipeline-retries', '1001'], /--pipeline-retries must be an integer from 0 to 1000/],
      [['server', '--pipeline-retry-backoff-max-ms', '5'], /--pipeline-retry-backoff-max-ms must be an integer from 100/],
      [['server', '--pipeline-batch-events', '0'], /--pipeline-batch-events must be an integer from 1/],
      [['server', '--start-timeout-ms', '10'], /--start-timeout-ms must be an integer from 100 to 600000/],
      [['server', '--status-write-timeout-ms', '50'], /--status-write-timeout-ms must be an integer from 100 to 60000/],
      [['server', '--status-writes-per-s', '0'], /--status-writes-per-s must be an integer from 1/],
      [['server', '--heartbeats-per-s', 'many'], /--heartbeats-per-s must be an integer from 1/],
      [['server', '--stall-after-ms', '50'], /--stall-after-ms must be 0 \(off\) or from 100 to 86400000/],
      [['server', '--config', '/nonexistent.json'], /cannot read config file/],
      [['bogus'], /unknown command or flag "bogus"/],
    ];
    for (const [args, message] of cases) {
      const result = run(...args);
      expect(result.status, args.join(' ')).toBe(2);
      expect(result.stderr).toMatch(message);
    }
  });
});

/** A `spanfeed server` process started by a test; killed by pid afterwards. */
interface Started {
  readonly child: ChildProcess;
  readonly exited: Promise<{ code: number | null; afterMs: number }>;
  stderr: string;
}

const started: Started[] = [];
const listeners: Server[] = [];
let etcd: TestEtcd | undefined;

function startServer(...args: string[]): Started {
  const t0 = Date.now();
  const child = spawn(process.execPath, [bin, 'server', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, SPANFEED_ETCD: '' } });
  const proc: Started = {
    child,
    stderr: '',
    exited: new Promise((resolve) => child.once('exit', (code) => resolve({ code, afterMs: Date.now() - t0 }))),
  };
  child.stderr?.on('data', (chunk: Buffer) => {
    proc.stderr += chunk.toString();
  });
  started.push(proc);
  return proc;
}

/** The `capture failed to start` log line's error. */
function startFailure(stderr: string): { type: string; message: string; retryable: boolean } {
  const line = stderr.split('\n').find((l) => l.includes('"capture failed to start"'));
  if (line === undefined) throw new Error(`no "capture failed to start" line in:\n${stderr}`);
  return (JSON.parse(line) as { err: { type: string; message: string; retryable: boolean } }).err;
}

/** Takes `127.0.0.1:<port>` with a plain listener, as another program would. */
async function occupiedPort(): Promise<number> {
  const server = createServer();
  listeners.push(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return (server.address() as AddressInfo).port;
}

afterEach(async () => {
  for (const proc of started.splice(0)) {
    if (proc.child.exitCode === null && proc.child.signalCode === null && proc.child.pid !== undefined) process.kill(proc.child.pid, 'SIGKILL');
    await proc.exited;
  }
  for (const server of listeners.splice(0)) await new Promise((resolve) => server.close(resolve));
});

afterAll(async () => {
  await etcd?.stop();
});

describe('a capture that cannot start', () => {
  // What the process may take beyond its start timeout: loading the CLI through tsx and
  // closing what it opened.
  const exitGraceMs = 10_000;
  // A capture that never exits fails its test instead of holding the suite.
  const testTimeoutMs = 30_000;

  it('exits non-zero within --start-timeout-ms when etcd is unreachable, naming the cause', async () => {
    const etcdPort = await freePort();
    const startTimeoutMs = 1_500;
    const proc = startServer('--etcd', `127.0.0.1:${etcdPort}`, '--start-timeout-ms', String(startTimeoutMs));
    const { code, afterMs } = await proc.exited;
    expect(code, proc.stderr).toBe(1);
    expect(afterMs).toBeLessThan(startTimeoutMs + exitGraceMs);
    const err = startFailure(proc.stderr);
    expect(err.type).toBe('StartError');
    expect(err.message).toContain(`within ${startTimeoutMs} ms`);
    expect(err.message).toContain(`127.0.0.1:${etcdPort}`);
    expect(err.message).toMatch(/ECONNREFUSED|UNAVAILABLE/);
    expect(proc.stderr).toMatch(/spanfeed server: .*--start-timeout-ms/);
  }, testTimeoutMs);

  it('exits non-zero at once when its HTTP port is taken, naming EADDRINUSE and the address', async () => {
    etcd ??= await TestEtcd.start();
    const port = await occupiedPort();
    // The default start timeout (30 s): the port, not the timeout, must end it.
    const proc = startServer('--etcd', etcd.endpoint, '--http', `127.0.0.1:${port}`);
    const { code, afterMs } = await proc.exited;
    expect(code, proc.stderr).toBe(1);
    expect(afterMs).toBeLessThan(exitGraceMs);
    const err = startFailure(proc.stderr);
    expect(err).toMatchObject({ type: 'StartError', retryable: false });
    expect(err.message).toContain('EADDRINUSE');
    expect(err.message).toContain(`127.0.0.1:${port}`);
  }, testTimeoutMs);

  it('exits non-zero at once when its gRPC port is taken, naming the address', async () => {
    etcd ??= await TestEtcd.start();
    const port = await occupiedPort();
    const proc = startServer('--etcd', etcd.endpoint, '--grpc', `127.0.0.1:${port}`);
    const { code, afterMs } = await proc.exited;
    expect(code, proc.stderr).toBe(1);
    expect(afterMs).toBeLessThan(exitGraceMs);
    const err = startFailure(proc.stderr);
    expect(err).toMatchObject({ type: 'StartError', retryable: false });
    expect(err.message).toContain(`127.0.0.1:${port}`);
  }, testTimeoutMs);
});

describe('Capture.start', () => {
  it('releases its ports and its etcd client when it gives up', async () => {
    const [httpPort, grpcPort, etcdPort] = [await freePort(), await freePort(), await freePort()];
    const config: ServerConfig = {
      ...serverDefaults,
      etcdEndpoints: [`127.0.0.1:${etcdPort}`],
      httpAddr: `127.0.0.1:${httpPort}`,
      grpcAddr: `127.0.0.1:${grpcPort}`,
      // Long enough for a refused connect to come back even on a loaded machine.
      startTimeoutMs: 2_000,
    };
    const capture = new Capture(config, 'test', createRootLogger('silent'), (c) => new HttpApi(c));
    // A call on a closed client may fail with the breaker's error instead, so watch close().
    const closeClient = vi.spyOn(capture.client, 'close');
    const failure = await capture.start().then(() => undefined, (error: unknown) => error);
    expect(failure).toBeInstanceOf(StartError);
    expect(failure).toMatchObject({ retryable: true });
    expect((failure as StartError).cause).toBeInstanceOf(Error);
    // Both ports can be taken again, and the client was closed.
    for (const port of [httpPort, grpcPort]) {
      const server = createServer();
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, '127.0.0.1', () => resolve());
      });
      await new Promise((resolve) => server.close(resolve));
    }
    expect(closeClient).toHaveBeenCalled();
  });
});

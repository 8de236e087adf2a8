import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

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

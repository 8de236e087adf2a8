/**
 * The deployment files are valid: docker-compose.yml passes `docker-compose config -q`
 * (no engine runs here, so this is the check), with and without the demo profile, and
 * the Dockerfile builds the image the compose file runs.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));

describe('deployment files', () => {
  it('docker-compose.yml is valid and defines three etcd members, three captures and the demo writer', () => {
    execFileSync('bash', ['scripts/ensure-docker-compose.sh'], { cwd: root, stdio: 'inherit' });
    const check = spawnSync('docker-compose', ['-f', 'docker-compose.yml', 'config', '-q'], { cwd: root, encoding: 'utf8' });
    expect(check.stderr).toBe('');
    expect(check.status).toBe(0);
    const services = spawnSync('docker-compose', ['-f', 'docker-compose.yml', '--profile', 'demo', 'config', '--services'], { cwd: root, encoding: 'utf8' });
    expect(services.stdout.trim().split('\n').sort()).toEqual(['capture1', 'capture2', 'capture3', 'etcd1', 'etcd2', 'etcd3', 'writer']);
  });

  it('the Dockerfile copies everything the server needs and runs spanfeed server', () => {
    const dockerfile = readFileSync(new URL('../../Dockerfile', import.meta.url), 'utf8');
    for (const dir of ['bin', 'src', 'proto', 'api']) expect(dockerfile).toContain(`COPY ${dir} ./${dir}`);
    expect(dockerfile).toContain('npm ci --omit=dev');
    expect(dockerfile).toMatch(/ENTRYPOINT \["node", "bin\/spanfeed"\]/);
  });
});

/**
 * The deployment files are valid: docker-compose.yml passes `docker-compose config -q`
 * (no engine runs here, so this is the check), with and without the demo profile, and
 * the Dockerfile builds the image the compose file runs. TLS is on in the compose file:
 * its resolved config (read with PyYAML, which docker-compose itself depends on) is
 * checked service by service, every capture's variables pass `spanfeed server`'s config
 * parser, and the certs service's script is run on a temp directory in place of its
 * volume, so every certificate, key and token file the compose file names is made and
 * checked.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { TokenFile } from '../../src/api/auth.ts';
import { parseServerConfig } from '../../src/server/server-config.ts';
import { readTlsMaterial } from '../../src/security/tls-files.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));

interface ComposeService {
  readonly command?: string | readonly string[];
  readonly entrypoint?: readonly string[];
  readonly environment?: Readonly<Record<string, string>>;
  readonly healthcheck?: { readonly test: readonly string[] };
  readonly depends_on?: Readonly<Record<string, { readonly condition: string }>>;
  readonly volumes?: readonly string[];
}

/** `docker-compose config` (merges and anchors resolved) as data. */
function composeConfig(): { services: Record<string, ComposeService> } {
  execFileSync('bash', ['scripts/ensure-docker-compose.sh'], { cwd: root, stdio: 'inherit' });
  const yaml = execFileSync('docker-compose', ['-f', 'docker-compose.yml', '--profile', 'demo', 'config'], { cwd: root, encoding: 'utf8' });
  const json = execFileSync('python3', ['-c', 'import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)'], { input: yaml, encoding: 'utf8' });
  return JSON.parse(json) as { services: Record<string, ComposeService> };
}

const captures = ['capture1', 'capture2', 'capture3'];
const etcdMembers = ['etcd1', 'etcd2', 'etcd3'];

/** The value after `flag` in an etcd command line. */
function flagValue(command: string, flag: string): string {
  const match = new RegExp(`(?:^|\\s)${flag}[ =](\\S+)`).exec(command);
  if (match === null) throw new Error(`no ${flag} in ${command}`);
  return match[1] as string;
}

describe('deployment files', () => {
  it('docker-compose.yml is valid and defines three etcd members, three captures and the demo writer', () => {
    execFileSync('bash', ['scripts/ensure-docker-compose.sh'], { cwd: root, stdio: 'inherit' });
    const check = spawnSync('docker-compose', ['-f', 'docker-compose.yml', 'config', '-q'], { cwd: root, encoding: 'utf8' });
    expect(check.stderr).toBe('');
    expect(check.status).toBe(0);
    const services = spawnSync('docker-compose', ['-f', 'docker-compose.yml', '--profile', 'demo', 'config', '--services'], { cwd: root, encoding: 'utf8' });
    expect(services.stdout.trim().split('\n').sort()).toEqual(['capture1', 'capture2', 'capture3', 'certs', 'demo-etcd', 'etcd1', 'etcd2', 'etcd3', 'writer']);
  });

  it('docker-compose.yml turns TLS on: captures with certificates, tokens and https etcd, etcd with client and peer certificates', () => {
    expect(readFileSync(join(root, 'docker-compose.yml'), 'utf8')).not.toContain('SPANFEED_INSECURE');
    const { services } = composeConfig();
    for (const [name, service] of Object.entries(services)) expect(service.environment?.SPANFEED_INSECURE, name).toBeUndefined();
    for (const name of captures) {
      const service = services[name] as ComposeService;
      const env = service.environment ?? {};
      expect(env, name).toMatchObject({
        SPANFEED_ADVERTISE_HOST: name,
        SPANFEED_TLS_CA: '/certs/ca.pem',
        SPANFEED_TLS_CERT: `/certs/${name}.pem`,
        SPANFEED_TLS_KEY: `/certs/${name}-key.pem`,
        SPANFEED_ETCD_CA: '/certs/ca.pem',
        SPANFEED_ETCD_CERT: `/certs/${name}.pem`,
        SPANFEED_ETCD_KEY: `/certs/${name}-key.pem`,
        SPANFEED_AUTH_TOKEN_FILE: '/certs/tokens',
        SPANFEED_FILE_SINK_ROOT: '/tmp/demo-out',
      });
      expect(String(env.SPANFEED_TLS_ALLOWED_NAMES).split(',').sort(), name).toEqual(captures);
      const endpoints = String(env.SPANFEED_ETCD).split(',');
      expect(endpoints, name).toEqual(etcdMembers.map((m) => `https://${m}:2379`));
      // The same variables `spanfeed server` reads in the container.
      const config = parseServerConfig([], env);
      expect(config.tls, name).toBeDefined();
      expect(config.etcdTls?.certFile, name).toBe(`/certs/${name}.pem`);
      expect(config.insecure, name).toBe(false);
      expect(config.advertiseHost).toBe(name);
      const health = (service.healthcheck?.test ?? []).join(' ');
      expect(health, name).toContain("require('https')");
      expect(health, name).toContain('/certs/ca.pem');
      expect(health, name).not.toContain('http://');
      expect(service.volumes, name).toContainEqual(expect.stringMatching(/^certs:\/certs:ro$/));
    }
    for (const name of etcdMembers) {
      const service = services[name] as ComposeService;
      const command = String(service.command);
      expect(command, name).not.toContain('http://');
      for (const flag of ['--listen-client-urls', '--advertise-client-urls', '--listen-peer-urls', '--initial-advertise-peer-urls']) expect(flagValue(command, flag), `${name} ${flag}`).toMatch(/^https:\/\//);
      expect(flagValue(command, '--initial-cluster').split(',')).toEqual(etcdMembers.map((m) => `${m}=https://${m}:2380`));
      expect(command).toMatch(/(^|\s)--client-cert-auth(\s|$)/);
      expect(command).toMatch(/(^|\s)--peer-client-cert-auth(\s|$)/);
      expect(flagValue(command, '--cert-file')).toBe(`/certs/${name}.pem`);
      expect(flagValue(command, '--peer-cert-file')).toBe(`/certs/${name}.pem`);
      expect(flagValue(command, '--trusted-ca-file')).toBe('/certs/ca.pem');
      expect(flagValue(command, '--peer-trusted-ca-file')).toBe('/certs/ca.pem');
      const health = service.healthcheck?.test ?? [];
      expect(health).toEqual(expect.arrayContaining(['etcdctl', '--endpoints=https://127.0.0.1:2379', '--cacert=/certs/ca.pem', `--cert=/certs/${name}.pem`, `--key=/certs/${name}-key.pem`]));
      expect(service.depends_on?.certs?.condition).toBe('service_completed_successfully');
    }
    expect(services.writer?.command).toEqual(expect.arrayContaining(['https://capture1:8080', '--token-file']));
  });

  it('the certs service makes every file the compose file names, and they fit together', () => {
    execFileSync('bash', ['scripts/ensure-openssl.sh'], { cwd: root, stdio: 'inherit' });
    const { services } = composeConfig();
    const certs = services.certs as ComposeService;
    expect(certs.entrypoint).toEqual(['sh', '-c']);
    // docker-compose config shows "$" escaped as "$$"; the container's sh sees one.
    const script = String((certs.command as readonly string[])[0]).replaceAll('$$', '$');
    const dir = mkdtempSync(join(tmpdir(), 'spanfeed-compose-certs-'));
    try {
      const inDir = (path: string): string => path.replace(/^\/certs\//, `${dir}/`);
      const run = spawnSync('sh', ['-c', script.replaceAll('/certs', dir)], { cwd: root, encoding: 'utf8', timeout: 60_000 });
      expect(run.stderr).toBe('');
      expect(run.status).toBe(0);
      expect(statSync(dir).mode & 0o777).toBe(0o700);
      for (const name of captures) {
        const env = services[name]?.environment ?? {};
        const tls = readTlsMaterial('--tls', { caFile: inDir(String(env.SPANFEED_TLS_CA)), certFile: inDir(String(env.SPANFEED_TLS_CERT)), keyFile: inDir(String(env.SPANFEED_TLS_KEY)) });
        expect(tls.names).toContain(env.SPANFEED_ADVERTISE_HOST);
        readTlsMaterial('--etcd', { caFile: inDir(String(env.SPANFEED_ETCD_CA)), certFile: inDir(String(env.SPANFEED_ETCD_CERT)), keyFile: inDir(String(env.SPANFEED_ETCD_KEY)) });
        expect(statSync(inDir(String(env.SPANFEED_TLS_KEY))).mode & 0o777).toBe(0o600);
        const tokenFile = inDir(String(env.SPANFEED_AUTH_TOKEN_FILE));
        expect(new TokenFile(tokenFile, (path) => readFileSync(path, 'utf8')).load().size).toBe(1);
        expect(readFileSync(tokenFile, 'utf8')).toMatch(/^[0-9a-f]{48} admin\n$/);
        expect(statSync(tokenFile).mode & 0o777).toBe(0o600);
      }
      for (const name of etcdMembers) {
        const command = String(services[name]?.command);
        const files = { caFile: inDir(flagValue(command, '--trusted-ca-file')), certFile: inDir(flagValue(command, '--cert-file')), keyFile: inDir(flagValue(command, '--key-file')) };
        expect(readTlsMaterial(name, files).names).toContain(name);
        readTlsMaterial(name, { caFile: inDir(flagValue(command, '--peer-trusted-ca-file')), certFile: inDir(flagValue(command, '--peer-cert-file')), keyFile: inDir(flagValue(command, '--peer-key-file')) });
      }
      readTlsMaterial('admin', { caFile: `${dir}/ca.pem`, certFile: `${dir}/admin.pem`, keyFile: `${dir}/admin-key.pem` });
      // A second `up` keeps what the volume holds.
      const before = readFileSync(`${dir}/ca.pem`);
      const token = readFileSync(`${dir}/tokens`);
      const again = spawnSync('sh', ['-c', script.replaceAll('/certs', dir)], { cwd: root, encoding: 'utf8', timeout: 60_000 });
      expect(again.status, again.stderr).toBe(0);
      expect(again.stdout).toContain('exists, keeping the certificates');
      expect(readFileSync(`${dir}/ca.pem`).equals(before)).toBe(true);
      expect(readFileSync(`${dir}/tokens`).equals(token)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the Dockerfile copies everything the server needs and runs spanfeed server', () => {
    const dockerfile = readFileSync(new URL('../../Dockerfile', import.meta.url), 'utf8');
    for (const dir of ['bin', 'src', 'proto', 'api']) expect(dockerfile).toContain(`COPY ${dir} ./${dir}`);
    expect(dockerfile).toContain('npm ci --omit=dev');
    expect(dockerfile).toMatch(/ENTRYPOINT \["node", "bin\/spanfeed"\]/);
    // The certs service runs `spanfeed certs create` and `openssl rand` in this image.
    expect(dockerfile).toMatch(/apt-get install -y --no-install-recommends openssl/);
  });
});

/**
 * The token file and insecure settings of `spanfeed server`: flag, variable and config
 * key, and the refusal to serve a non-loopback address without tokens unasked.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, parseServerConfig } from '../../src/server/server-config.ts';

const dir = mkdtempSync(join(tmpdir(), 'spanfeed-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('server config: API tokens', () => {
  it('takes the token file from the flag, the variable or the config file, and none by default', () => {
    expect(parseServerConfig([], {})).toMatchObject({ authTokenFile: undefined, insecure: false });
    expect(parseServerConfig(['--auth-token-file', '/t'], {}).authTokenFile).toBe('/t');
    expect(parseServerConfig([], { SPANFEED_AUTH_TOKEN_FILE: '/e' }).authTokenFile).toBe('/e');
    const config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ authTokenFile: '/c', insecure: true, http: '0.0.0.0:8080' }));
    expect(parseServerConfig(['--config', config], {})).toMatchObject({ authTokenFile: '/c', insecure: true, httpAddr: '0.0.0.0:8080' });
    expect(parseServerConfig(['--config', config, '--auth-token-file', '/f'], { SPANFEED_AUTH_TOKEN_FILE: '/e' }).authTokenFile).toBe('/f');
  });

  it('refuses a non-loopback HTTP address without tokens unless --insecure', () => {
    expect(() => parseServerConfig(['--http', '0.0.0.0:8080'], {})).toThrow(ConfigError);
    expect(() => parseServerConfig(['--http', '10.1.2.3:8080'], {})).toThrow(/--http 10\.1\.2\.3:8080 is not a loopback address and no --auth-token-file or --tls-client-roles is set/);
    expect(parseServerConfig(['--http', '0.0.0.0:8080', '--insecure'], {}).insecure).toBe(true);
    expect(parseServerConfig(['--http', '0.0.0.0:8080'], { SPANFEED_INSECURE: 'true' }).insecure).toBe(true);
    expect(parseServerConfig(['--http', '0.0.0.0:8080', '--auth-token-file', '/t'], {}).httpAddr).toBe('0.0.0.0:8080');
    expect(parseServerConfig(['--http', 'localhost:8080'], {}).insecure).toBe(false);
    expect(() => parseServerConfig([], { SPANFEED_INSECURE: 'maybe' })).toThrow(/--insecure must be true or false/);
    expect(() => parseServerConfig([], { SPANFEED_HTTP: '0.0.0.0:1', SPANFEED_INSECURE: 'false' })).toThrow(/not a loopback address/);
  });
});

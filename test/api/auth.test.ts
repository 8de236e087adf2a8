/**
 * The token file parser, the authorization decision and the cross-site checks, as pure
 * functions: every line a file may hold, every (method, path, token) class.
 */
import { describe, expect, it } from 'vitest';
import { TokenFile, TokenFileError, TokenTable, authorize, crossSiteRefusal, isMutating, needsToken, parseRole } from '../../src/api/auth.ts';
import { isLoopbackAddress } from '../../src/server/server-config.ts';

const admin = 'admin-token-0123456789';
const reader = 'read-token-0123456789';
const table = TokenTable.parse(`# operators\n${admin} admin\n\n  ${reader}\tread  \r\n# the end\n`, 'tokens');

describe('token file', () => {
  it('reads tokens and roles, skipping blank lines and # comments', () => {
    expect(table.size).toBe(2);
    expect(table.roleOf(admin)).toBe('admin');
    expect(table.roleOf(reader)).toBe('read');
    expect(table.roleOf('unknown-token-0123456789')).toBeUndefined();
    expect(table.roleOf(`${admin}x`)).toBeUndefined();
    expect(table.roleOf(admin.slice(0, -1))).toBeUndefined();
    expect(table.roleOf('')).toBeUndefined();
  });

  it('refuses a bad file, naming the line', () => {
    const cases: [string, RegExp][] = [
      [`${admin} admin\n${reader}\n`, /^f line 2: expected "<token> <role>", got 1 fields$/],
      [`${admin} admin extra\n`, /^f line 1: expected "<token> <role>", got 3 fields$/],
      [`# x\n${admin} root\n`, /^f line 2: unknown role "root"; use read or admin$/],
      ['short admin\n', /^f line 1: a token must be 16 to 512 characters, got 5$/],
      [`${'x'.repeat(513)} admin\n`, /^f line 1: a token must be 16 to 512 characters/],
      [`${admin}\u00e9 admin\n`, /^f line 1: a token must be printable ASCII/],
      [`${admin} admin\n${admin} read\n`, /^f line 2: the token is listed twice$/],
      ['# nothing\n\n', /^f: holds no token/],
      ['', /^f: holds no token/],
    ];
    for (const [text, message] of cases) {
      expect(() => TokenTable.parse(text, 'f'), JSON.stringify(text)).toThrow(TokenFileError);
      expect(() => TokenTable.parse(text, 'f'), JSON.stringify(text)).toThrow(message);
    }
  });

  it('keeps the tokens in use when a reload meets a bad file', () => {
    let text = `${admin} admin\n`;
    const file = new TokenFile('f', () => text);
    file.load();
    expect(file.table?.roleOf(admin)).toBe('admin');
    text = `${admin} admin\n${reader} read\n`;
    file.load();
    expect(file.table?.roleOf(reader)).toBe('read');
    text = `${reader} reader\n`;
    expect(() => file.load()).toThrow(/f line 1: unknown role/);
    expect(file.table?.roleOf(reader)).toBe('read');
    const missing = new TokenFile('/nonexistent', () => {
      throw new Error('ENOENT: no such file');
    });
    expect(() => missing.load()).toThrow(/^cannot read \/nonexistent: ENOENT/);
    expect(missing.table).toBeUndefined();
  });
});

describe('authorization', () => {
  const bearer = (token: string): string => `Bearer ${token}`;

  it('allows everything without a token file', () => {
    for (const method of ['GET', 'POST', 'PUT', 'DELETE']) expect(authorize(method, '/api/v1/changefeeds', undefined, undefined)).toEqual({ allow: true, role: undefined });
  });

  it('answers 401 without a token or with an unknown one, on every protected path', () => {
    for (const path of ['/api/v1/status', '/api/v1/changefeeds', '/api/v1/changefeeds/x/spans', '/api/v1/openapi.json', '/api/v1', '/api/v1/nope', '/metrics']) {
      for (const header of [undefined, '', 'Bearer', 'Bearer ', `Basic ${admin}`, bearer('unknown-token-0123456789'), `Bearer ${admin} x`, admin]) {
        const decision = authorize('GET', path, header, table);
        expect(decision, `${path} ${header}`).toMatchObject({ allow: false, status: 401, code: 'unauthorized' });
      }
    }
  });

  it('lets the read role GET and the admin role do anything; 403 for read on a mutation', () => {
    expect(authorize('GET', '/api/v1/changefeeds', bearer(reader), table)).toEqual({ allow: true, role: 'read' });
    expect(authorize('GET', '/metrics', bearer(reader), table)).toEqual({ allow: true, role: 'read' });
    expect(authorize('HEAD', '/api/v1/changefeeds', bearer(reader), table)).toEqual({ allow: true, role: 'read' });
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
      expect(authorize(method, '/api/v1/changefeeds', bearer(reader), table), method).toMatchObject({ allow: false, status: 403, code: 'forbidden' });
      expect(authorize(method, '/api/v1/changefeeds', bearer(admin), table), method).toEqual({ allow: true, role: 'admin' });
    }
    // The scheme is case-insensitive (RFC 9110).
    expect(authorize('POST', '/api/v1/owner/resign', `bearer ${admin}`, table)).toEqual({ allow: true, role: 'admin' });
  });

  it('takes a role vouched for by a client certificate (or a forwarding capture) before a token', () => {
    const certs = { certificatesConfigured: true };
    expect(authorize('POST', '/api/v1/changefeeds', undefined, undefined, { ...certs, vouchedRole: 'admin' })).toEqual({ allow: true, role: 'admin' });
    expect(authorize('POST', '/api/v1/changefeeds', bearer(admin), table, { ...certs, vouchedRole: 'read' })).toMatchObject({ allow: false, status: 403 });
    expect(authorize('GET', '/api/v1/changefeeds', undefined, undefined, { ...certs, vouchedRole: 'read' })).toEqual({ allow: true, role: 'read' });
    // Certificates configured, none shown and no token file: 401 naming what is needed.
    expect(authorize('GET', '/api/v1/changefeeds', undefined, undefined, certs)).toMatchObject({ allow: false, status: 401, message: expect.stringContaining('client certificate') });
    expect(authorize('GET', '/api/v1/changefeeds', bearer(admin), undefined, certs)).toMatchObject({ allow: false, status: 401 });
    // Both configured: a token still works without a certificate.
    expect(authorize('DELETE', '/api/v1/changefeeds/x', bearer(admin), table, certs)).toEqual({ allow: true, role: 'admin' });
    expect(parseRole('admin')).toBe('admin');
    for (const odd of [undefined, 'root', ['admin'], 'Admin']) expect(parseRole(odd)).toBeUndefined();
  });

  it('leaves the liveness probe and the dashboard page open', () => {
    for (const path of ['/api/v1/health', '/', '/favicon.ico']) expect(authorize('GET', path, undefined, table), path).toEqual({ allow: true, role: undefined });
    expect(needsToken('/api/v1/health')).toBe(false);
    expect(needsToken('/api/v1/healthz')).toBe(true);
    expect(needsToken('/api/v10')).toBe(false);
    expect(isMutating('get')).toBe(false);
    expect(isMutating('POST')).toBe(true);
  });
});

describe('cross-site checks', () => {
  const host = '127.0.0.1:8080';

  it('refuses a mutation without a JSON content type with 415', () => {
    for (const type of [undefined, 'text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/jsonx']) {
      expect(crossSiteRefusal('POST', type, undefined, host), String(type)).toMatchObject({ status: 415, code: 'unsupported-media-type' });
    }
    for (const type of ['application/json', 'Application/JSON; charset=utf-8']) expect(crossSiteRefusal('PUT', type, undefined, host)).toBeUndefined();
  });

  it('refuses a mutation from another origin with 403, whatever its content type', () => {
    for (const origin of ['http://evil.example', 'null', 'http://127.0.0.1:8081', 'http://127.0.0.1:8080.evil.example']) {
      expect(crossSiteRefusal('POST', 'application/json', origin, host), origin).toMatchObject({ status: 403, code: 'cross-origin' });
    }
    expect(crossSiteRefusal('DELETE', 'application/json', 'http://127.0.0.1:8080', host)).toBeUndefined();
    expect(crossSiteRefusal('DELETE', 'application/json', 'http://evil.example', undefined)).toMatchObject({ status: 403 });
  });

  it('passes reads', () => {
    expect(crossSiteRefusal('GET', 'text/plain', 'http://evil.example', host)).toBeUndefined();
  });

  it('knows the loopback addresses', () => {
    for (const address of ['127.0.0.1:0', '127.1.2.3:80', 'localhost:8080', '[::1]:8080']) expect(isLoopbackAddress(address), address).toBe(true);
    for (const address of ['0.0.0.0:8080', '[::]:8080', '10.0.0.1:8080', 'example.com:80', '127.0.0.1.example.com:80']) expect(isLoopbackAddress(address), address).toBe(false);
  });
});

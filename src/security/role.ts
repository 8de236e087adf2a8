/**
 * What an API caller may do: `read` (GET requests) or `admin` (everything). Below the API
 * layer, so that the server's config (client-certificate roles) and the TLS code can name
 * roles without importing the API.
 */
export type Role = 'read' | 'admin';

/** Every role, in the order error messages list them. */
export const roles: readonly Role[] = ['read', 'admin'];

/**
 * The integration tests' names for the local cluster processes.
 */
export { LocalCapture as TestCapture, LocalEtcd as TestEtcd, api, apiWith, callAny, freePort, ownerAmong, waitFor } from '../../src/dev/local-cluster.ts';
export type { ApiAnswer, ApiCallOptions, ChangefeedView, SpanView } from '../../src/dev/local-cluster.ts';

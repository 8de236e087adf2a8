/**
 * The etcd key layout (DESIGN.md §2), under `/spanfeed/<cluster-id>`.
 */
export interface ClusterKeys {
  readonly root: string;
  readonly capturesPrefix: string;
  capture(id: string): string;
  readonly ownerPrefix: string;
  ownerKey(leaseIdHex: string): string;
  readonly changefeedsPrefix: string;
  changefeedInfo(id: string): string;
  changefeedStatus(id: string): string;
  changefeedPrefix(id: string): string;
  backfillPrefix(id: string): string;
  readonly drainingPrefix: string;
  draining(captureId: string): string;
  /**
   * Moved by every owner drain write and by a drain read: a drain write compares it, so
   * one given up on cannot land after the owner read the drains again.
   */
  readonly drainsGuard: string;
}

/** The keys of cluster `clusterId`. */
export function clusterKeys(clusterId: string): ClusterKeys {
  const root = `/spanfeed/${clusterId}`;
  return {
    root,
    capturesPrefix: `${root}/captures/`,
    capture: (id) => `${root}/captures/${id}`,
    ownerPrefix: `${root}/owner/`,
    ownerKey: (leaseIdHex) => `${root}/owner/${leaseIdHex}`,
    changefeedsPrefix: `${root}/changefeeds/`,
    changefeedInfo: (id) => `${root}/changefeeds/${id}/info`,
    changefeedStatus: (id) => `${root}/changefeeds/${id}/status`,
    changefeedPrefix: (id) => `${root}/changefeeds/${id}/`,
    // Outside the changefeeds prefix: captures re-read that one on every change.
    backfillPrefix: (id) => `${root}/backfill/${id}/`,
    // Drains survive an owner change: the next owner reads them before its first tick.
    drainingPrefix: `${root}/draining/`,
    draining: (captureId) => `${root}/draining/${captureId}`,
    drainsGuard: `${root}/drains-guard`,
  };
}

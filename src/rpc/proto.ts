/**
 * Loads `proto/spanfeed/v1/scheduler.proto` with @grpc/proto-loader.
 */
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const protoPath = fileURLToPath(new URL('../../proto/spanfeed/v1/scheduler.proto', import.meta.url));

const definition = protoLoader.loadSync(protoPath, { keepCase: false, longs: String, enums: String, defaults: true, oneofs: true });
const loaded = grpc.loadPackageDefinition(definition) as unknown as {
  spanfeed: { v1: { CaptureService: grpc.ServiceClientConstructor } };
};

/** The capture service: `Connect(stream OwnerMessage) returns (stream CaptureMessage)`. */
export const CaptureServiceClient = loaded.spanfeed.v1.CaptureService;
export const captureServiceDefinition = loaded.spanfeed.v1.CaptureService.service;

/** Keepalive on the long-lived stream instead of a deadline (which would bound it). */
export const keepaliveOptions: grpc.ChannelOptions = {
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.http2.min_ping_interval_without_data_ms': 5_000,
};

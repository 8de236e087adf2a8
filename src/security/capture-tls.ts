/**
 * A capture's TLS: one CA, one certificate, used for its HTTPS API, its gRPC server
 * (mutual TLS: a peer must show a certificate the CA signed) and, as owner, its gRPC
 * clients and forwarded API requests (which show the same certificate).
 *
 * Who a peer is: the names of its certificate (subject CN and DNS alt names). With
 * `--tls-allowed-names` only those names are captures: the gRPC server refuses other
 * peers, clients refuse servers without one, and only they may pass a caller's role on
 * when forwarding an API request to the owner. `--tls-client-roles` maps the names of
 * operators' client certificates to API roles.
 */
import { checkServerIdentity } from 'node:tls';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Role } from './role.ts';
import type { TlsFiles, TlsMaterial } from './tls-files.ts';
import { certificateNames, peerNameAllowed, readTlsMaterial } from './tls-files.ts';

/** What a TLS client needs to dial a capture: node:https / node:tls options. */
export interface TlsClientOptions {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly checkServerIdentity: (host: string, cert: PeerCertificate) => Error | undefined;
}

export class CaptureTls {
  private constructor(
    readonly material: TlsMaterial,
    readonly allowedNames: ReadonlySet<string> | undefined,
    readonly clientRoles: ReadonlyMap<string, Role> | undefined,
  ) {}

  /** Reads and checks the files (throws a `TlsFileError` naming the one that is wrong). */
  static load(files: TlsFiles, allowedNames: ReadonlySet<string> | undefined, clientRoles: ReadonlyMap<string, Role> | undefined): CaptureTls {
    const material = readTlsMaterial('--tls', files);
    if (allowedNames !== undefined && !peerNameAllowed(material.names, allowedNames)) {
      // Our own certificate must pass our peers' check, or no owner could talk to us.
      throw new Error(`--tls-cert ${files.certFile} has the names ${material.names.join(', ') || '(none)'}, none of them in --tls-allowed-names`);
    }
    return new CaptureTls(material, allowedNames, clientRoles);
  }

  /** gRPC server side: our certificate, and a client certificate the CA signed required of every peer. */
  grpcServerCredentials(): grpc.ServerCredentials {
    return grpc.ServerCredentials.createSsl(this.material.ca, [{ cert_chain: this.material.cert, private_key: this.material.key }], true);
  }

  /** gRPC client side (the owner): our certificate shown, the server's checked by {@link serverIdentityCheck}. */
  grpcChannelCredentials(): grpc.ChannelCredentials {
    return grpc.credentials.createSsl(this.material.ca, this.material.key, this.material.cert, { checkServerIdentity: this.serverIdentityCheck });
  }

  /**
   * Channel options of the owner's streams. With allowed names the server's certificate
   * is checked by name, not by the address dialled, so the TLS server name sent can be
   * one of them: grpc-js would otherwise send the IP address it dials, which Node warns
   * about (DEP0123, an IP is not a valid SNI name).
   */
  grpcChannelOptions(): Record<string, string> {
    const [name] = [...(this.allowedNames ?? [])].sort();
    return name === undefined ? {} : { 'grpc.ssl_target_name_override': name };
  }

  /** node:https / node:tls client options, for requests to another capture. */
  clientOptions(): TlsClientOptions {
    return { ca: this.material.ca, cert: this.material.cert, key: this.material.key, checkServerIdentity: this.serverIdentityCheck };
  }

  /**
   * A server we dial is a capture when its certificate has an allowed name; without a
   * list, the usual host-name check applies (the CA alone vouches for it then).
   */
  readonly serverIdentityCheck = (host: string, cert: PeerCertificate): Error | undefined => {
    if (this.allowedNames === undefined) return checkServerIdentity(host, cert);
    const names = certificateNames(cert);
    return peerNameAllowed(names, this.allowedNames) ? undefined : new Error(`the server at ${host} shows a certificate for ${names.join(', ') || '(no name)'}, none of them in --tls-allowed-names`);
  };

  /** True when a gRPC or HTTPS peer with this verified certificate is a capture. */
  isCapture(cert: PeerCertificate | undefined): boolean {
    if (cert === undefined) return false;
    return peerNameAllowed(certificateNames(cert), this.allowedNames);
  }

  /** The role of an operator's client certificate, by its first name that has one. */
  roleOf(cert: PeerCertificate | undefined): Role | undefined {
    if (cert === undefined || this.clientRoles === undefined) return undefined;
    for (const name of certificateNames(cert)) {
      const role = this.clientRoles.get(name);
      if (role !== undefined) return role;
    }
    return undefined;
  }
}

/** The certificate of a TLS socket's peer when the CA verified it; undefined otherwise (or plain text). */
export function verifiedPeerCertificate(socket: unknown): PeerCertificate | undefined {
  const tlsSocket = socket as Partial<TLSSocket> | undefined;
  if (tlsSocket?.authorized !== true || typeof tlsSocket.getPeerCertificate !== 'function') return undefined;
  const cert = tlsSocket.getPeerCertificate();
  return cert !== undefined && Object.keys(cert).length > 0 ? cert : undefined;
}

# spanfeed capture image: `docker build -t spanfeed .`; runs `spanfeed server` by default.
FROM node:20-bookworm-slim
WORKDIR /opt/spanfeed
# openssl: `spanfeed certs create` (the compose file's certs service) runs it; the slim
# base image has the library only.
RUN apt-get update \
  && apt-get install -y --no-install-recommends openssl \
  && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY bin ./bin
COPY src ./src
COPY proto ./proto
COPY api ./api
COPY scripts ./scripts
ENV NODE_ENV=production
EXPOSE 8080 9000
HEALTHCHECK --interval=5s --timeout=3s --retries=5 CMD node -e "fetch('http://127.0.0.1:8080/api/v1/health').then(r=>process.exit(r.ok?0:1)).catch(()=>process.exit(1))"
ENTRYPOINT ["node", "bin/spanfeed"]
CMD ["server", "--http", "0.0.0.0:8080", "--grpc", "0.0.0.0:9000"]

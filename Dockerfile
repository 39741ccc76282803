# pg2kafka relay image. Build: docker build -t pg2kafka .   (or podman build)
# Run:   docker run --rm -e DATABASE_URL=... -e KAFKA_BROKERS=... pg2kafka
# NODE_IMAGE: any Debian bookworm image with Node 20 in /usr/local (the official one by
# default; `npm run image` passes a local stand-in where the registry is out of reach).
ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
# The librdkafka client's build: compilers and the libraries it links against. libcurl is
# left out on purpose: librdkafka needs it only for OAUTHBEARER/OIDC, which pg2kafka does
# not configure, and it would bring 30 MB of libraries into the final image.
RUN apt-get update \
  && apt-get install -y --no-install-recommends build-essential python3 \
    libssl-dev libsasl2-dev libzstd-dev liblz4-dev zlib1g-dev \
  && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
# Scripts off (`prepare` would compile sources not copied yet), then the native client's
# own install, always built here (never its downloadable prebuilt binary): against the
# system's libraries (CKJS_LINKING=dynamic) and the image's Node headers.
ENV CKJS_LINKING=dynamic npm_config_nodedir=/usr/local npm_config_build_from_source=true
RUN npm ci --ignore-scripts \
  && npm rebuild @confluentinc/kafka-javascript \
  && node -e "require('@confluentinc/kafka-javascript')"
COPY src ./src
RUN npm run build && npm prune --omit=dev
# What the native client needs at run time is its addon and librdkafka's shared objects;
# the sources and static archives of its build are 270 MB. Type declarations are not run
# (@types/pg stays after the prune as an optional peer of node-pg-migrate).
RUN cd node_modules/@confluentinc/kafka-javascript \
  && rm -rf deps src build/Release/obj.target build/Release/.deps build/deps/include \
    build/deps/librdkafka build/deps/pkgconfig build/deps/*.a \
  && strip --strip-unneeded build/Release/*.node build/deps/*.so.* \
  && cd /app && rm -rf node_modules/@types && find node_modules -name '*.d.ts' -delete

FROM ${NODE_IMAGE}
# librdkafka's run-time libraries (those of the build above) and the CA bundle it reads
# for KAFKA_TLS without KAFKA_TLS_CA.
RUN apt-get update \
  && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 \
    libsasl2-modules libzstd1 liblz4-1 zlib1g \
  && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY migrations ./migrations
COPY sql ./sql
# The default client, librdkafka, must load here: fail the build, not the first start.
RUN node -e "require('@confluentinc/kafka-javascript')"
USER node
# SIGTERM drains the batch in flight and exits 0 within 10 s.
STOPSIGNAL SIGTERM
# The relay's /healthz on HTTP_HOST/HTTP_PORT (src/ops/healthcheck.ts): the loop turned
# recently; PostgreSQL or Kafka being down does not fail it. migrate and setup serve no
# HTTP: compose disables the check for them. With HTTP_PORT=off, run with --no-healthcheck.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "/app/dist/src/ops/healthcheck.js"]
ENTRYPOINT ["node", "dist/src/cli.js"]
CMD ["relay"]

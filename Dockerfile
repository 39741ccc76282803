# pg2kafka relay image. Build: docker build -t pg2kafka .
# Run:   docker run --rm -e DATABASE_URL=... -e KAFKA_BROKERS=... pg2kafka
FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
RUN npm ci --ignore-scripts
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY migrations ./migrations
COPY sql ./sql
USER node
# SIGTERM drains the batch in flight and exits 0 within 10 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "dist/src/cli.js"]
CMD ["relay"]

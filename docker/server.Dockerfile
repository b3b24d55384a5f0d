# The pricing server and console: `docker build -f docker/server.Dockerfile .`
# then `docker run -p 5002:5002 -v $PWD/run:/artifacts:ro IMAGE`
# (or PRICE_ARTIFACTS=s3://bucket/prefix with AWS credentials in the
# environment). The server does not link libtorch: only the MLP trainer
# process (crates/mlp-train) does.

FROM rust:1.95-bookworm AS build
# LightGBM's build needs cmake >= 3.28 (Debian 12 has 3.25) and libclang.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/cmake \
 && /opt/cmake/bin/pip install --no-cache-dir "cmake==3.31.6"
ENV PATH="/opt/cmake/bin:${PATH}" CMAKE=/opt/cmake/bin/cmake
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p serve \
 && install -D -m 0755 target/release/serve /out/serve

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libgomp1 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin price
COPY --from=build /out/serve /usr/local/bin/serve
USER 10001
ENV HOST=0.0.0.0 PORT=5002 PRICE_ARTIFACTS=/artifacts
EXPOSE 5002
# /ping over bash's /dev/tcp: no curl in the image.
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/5002 && printf 'GET /ping HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/serve"]

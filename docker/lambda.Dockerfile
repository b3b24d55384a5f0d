# The Lambda as a container image on the provided.al2023 runtime:
# `docker build -f docker/lambda.Dockerfile .`, push to ECR, and create the
# function from the image with PRICE_ARTIFACTS=s3://bucket/prefix.

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/tools \
 && /opt/tools/bin/pip install --no-cache-dir "cmake==3.31.6" "cargo-lambda==1.9.2"
ENV PATH="/opt/tools/bin:${PATH}" CMAKE=/opt/tools/bin/cmake
WORKDIR /src
COPY . .
# cargo lambda links against the al2023 glibc with zig: the binary runs there.
RUN cargo lambda build --release --locked -p lambda --x86-64 \
 && install -D -m 0755 target/lambda/price-lambda/bootstrap /out/bootstrap

FROM public.ecr.aws/lambda/provided:al2023
COPY --from=build /out/bootstrap /var/runtime/bootstrap
ENV AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH=true
CMD ["bootstrap"]

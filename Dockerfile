# GPU image: the official Paddle 3.0.0 CUDA 12.6 / cuDNN 9.5 image plus this project and its pins.
#   docker build -t paddle-asr .
#   docker run --gpus all -v /data/aishell:/data/aishell paddle-asr \
#     bash run.sh --recipe aishell --stage 0 --stop_stage 6 --data_dir /data/aishell
FROM paddlepaddle/paddle:3.0.0-gpu-cuda12.6-cudnn9.5-trt10.5

WORKDIR /workspace/paddle-asr
COPY requirements.txt pyproject.toml README.md ./
# The image already holds paddlepaddle-gpu 3.0.0: install every other pin, never the CPU wheel.
RUN grep -v '^paddlepaddle==' requirements.txt > /tmp/requirements-gpu.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements-gpu.txt
COPY paddle_asr ./paddle_asr
RUN python -m pip install --no-cache-dir --no-deps -e .
COPY run.sh ./
COPY local ./local
COPY utils ./utils
COPY recipes ./recipes
COPY docker ./docker
# setup_env.sh uses this interpreter instead of creating a virtual environment.
ENV PADDLE_ASR_PYTHON=/usr/bin/python
ENTRYPOINT ["bash", "docker/entrypoint.sh"]
CMD ["bash", "run.sh"]

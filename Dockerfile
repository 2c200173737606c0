# A headless-Chrome image with everything installed: the same steps as the README, and a warm cache (the
# converted default model and the Chromium wrapper), so a container's first run starts at once.
FROM python:3.11-slim-bookworm
WORKDIR /r3v
COPY . .
ENV R3V_CACHE=/r3v/cache
RUN SKIP_APT=0 PYTHON=python bash install.sh && rm -rf /root/.cache/pip \
    && python experiments/prepare_cache.py
# MiniWoB++ needs no server: the miniwob wheel ships its task pages (file://); Chromium runs headless.
CMD ["python", "experiments/run.py", "env=miniwob"]

# A headless-Chrome image with everything installed: the same steps as the README.
FROM python:3.11-slim-bookworm
WORKDIR /r3v
COPY . .
RUN SKIP_APT=0 PYTHON=python bash install.sh && rm -rf /root/.cache/pip
ENV R3V_CACHE=/r3v/.cache
# MiniWoB++ needs no server: the miniwob wheel ships its task pages (file://); Chromium runs headless.
CMD ["python", "experiments/run.py", "env=miniwob"]

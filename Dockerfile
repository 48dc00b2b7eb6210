# FashionNet on the official Airflow image: the project's pinned requirements and packages.
# requirements-deploy.txt = requirements.txt + what docker-compose.yml needs on top (the Celery executor and
# Redis client, the PostgreSQL drivers, the FAB auth manager), all pinned.
FROM apache/airflow:3.3.2-python3.11

# cpu (the default: tensorflow-cpu from requirements.txt) or gpu: tensorflow[and-cuda] at the same version
# (requirements-gpu.txt), for the workers of the `tensorflow` queue on NVIDIA GPU hosts
# (docker compose -f docker-compose.yml -f docker-compose.gpu.yml up -d --build).
ARG TENSORFLOW_VARIANT=cpu

# var/ (converted weights; the demo store's site, a named volume that starts with this folder's owner)
# writable by the airflow user.
USER root
RUN mkdir -p /opt/fashionnet/var/demo-store && chown -R airflow:root /opt/fashionnet
USER airflow

COPY --chown=airflow:root requirements.txt requirements-deploy.txt requirements-gpu.txt /opt/fashionnet/
RUN pip install --no-cache-dir -r /opt/fashionnet/requirements-deploy.txt \
    && case "$TENSORFLOW_VARIANT" in \
         cpu) ;; \
         gpu) pip uninstall -y tensorflow-cpu && pip install --no-cache-dir -r /opt/fashionnet/requirements-gpu.txt ;; \
         *) echo "TENSORFLOW_VARIANT must be cpu or gpu, got $TENSORFLOW_VARIANT" >&2; exit 1 ;; \
       esac
COPY --chown=airflow:root config /opt/fashionnet/config
COPY --chown=airflow:root dags /opt/fashionnet/dags
COPY --chown=airflow:root pipeline /opt/fashionnet/pipeline
COPY --chown=airflow:root models /opt/fashionnet/models
COPY --chown=airflow:root scrapers /opt/fashionnet/scrapers
COPY --chown=airflow:root plugins /opt/fashionnet/plugins
# The tools: the demo-store service (docker-compose.yml, profile demo) runs fashionnet_tools.demo_store.
COPY --chown=airflow:root fashionnet_tools /opt/fashionnet/fashionnet_tools
# The project on PYTHONPATH (tasks import pipeline, models, scrapers; the plugin imports pipeline); its DAGs
# and plugins folders (docker-compose.yml sets the same).
ENV PYTHONPATH=/opt/fashionnet \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/fashionnet/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/fashionnet/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    TF_ENABLE_ONEDNN_OPTS=1
WORKDIR /opt/fashionnet

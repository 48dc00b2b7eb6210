# FashionNet on the official Airflow image: the project's pinned requirements and packages.
# requirements-deploy.txt = requirements.txt + what docker-compose.yml needs on top (the Celery executor and
# Redis client, the PostgreSQL drivers, the FAB auth manager), all pinned.
FROM apache/airflow:3.3.2-python3.11

# var/ (converted weights; the demo store's site, a named volume that starts with this folder's owner)
# writable by the airflow user.
USER root
RUN mkdir -p /opt/fashionnet/var/demo-store && chown -R airflow:root /opt/fashionnet
USER airflow

COPY --chown=airflow:root requirements.txt requirements-deploy.txt /opt/fashionnet/
RUN pip install --no-cache-dir -r /opt/fashionnet/requirements-deploy.txt
COPY --chown=airflow:root config /opt/fashionnet/config
COPY --chown=airflow:root dags /opt/fashionnet/dags
COPY --chown=airflow:root pipeline /opt/fashionnet/pipeline
COPY --chown=airflow:root models /opt/fashionnet/models
COPY --chown=airflow:root scrapers /opt/fashionnet/scrapers
COPY --chown=airflow:root plugins /opt/fashionnet/plugins
# The project on PYTHONPATH (tasks import pipeline, models, scrapers; the plugin imports pipeline); its DAGs
# and plugins folders (docker-compose.yml sets the same).
ENV PYTHONPATH=/opt/fashionnet \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/fashionnet/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/fashionnet/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    TF_ENABLE_ONEDNN_OPTS=1
WORKDIR /opt/fashionnet

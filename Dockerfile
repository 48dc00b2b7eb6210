# FashionNet on the official Airflow image: the project's pinned requirements and packages.
FROM apache/airflow:3.3.2-python3.11
COPY --chown=airflow:root requirements.txt /opt/fashionnet/requirements.txt
RUN pip install --no-cache-dir -r /opt/fashionnet/requirements.txt
COPY --chown=airflow:root config /opt/fashionnet/config
COPY --chown=airflow:root dags /opt/fashionnet/dags
COPY --chown=airflow:root pipeline /opt/fashionnet/pipeline
COPY --chown=airflow:root models /opt/fashionnet/models
COPY --chown=airflow:root scrapers /opt/fashionnet/scrapers
COPY --chown=airflow:root plugins /opt/fashionnet/plugins
ENV PYTHONPATH=/opt/fashionnet \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/fashionnet/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/fashionnet/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    TF_ENABLE_ONEDNN_OPTS=1
WORKDIR /opt/fashionnet

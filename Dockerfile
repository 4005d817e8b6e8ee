FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY aggregates aggregates
COPY projections projections
COPY streams streams
COPY api api
COPY erp erp
RUN pip install --no-cache-dir .
ENV ERP_LOG_JSON=true
EXPOSE 8000
CMD ["erp", "serve", "--host", "0.0.0.0", "--port", "8000"]

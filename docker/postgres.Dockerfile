# PostgreSQL 15 from Debian's packages, for the MLflow tracking server's backend store.
FROM catsith-postgres-base:bookworm
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
RUN chmod +x /usr/local/bin/postgres-entrypoint.sh && mkdir -p /var/lib/postgresql/data \
    && chown -R postgres:postgres /var/lib/postgresql
USER postgres
ENV PGDATA=/var/lib/postgresql/data
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/postgres-entrypoint.sh"]

"""The real `ports.Connectors`: database and object-store sessions from a Secret's data."""

from __future__ import annotations

from collections.abc import Mapping

from snapgroup.adapters.mongo import MongoConnection
from snapgroup.adapters.objectstore import ObjectStoreConnection
from snapgroup.adapters.postgres import PostgresConnection
from snapgroup.ports import MongoSession, ObjectStoreSession, PostgresSession


class DatabaseConnectors:
    """Opens sessions with psycopg, pymongo and the minio SDK; failures are StepErrors."""

    async def postgres(
        self, secret: Mapping[str, str], timeout: float, application_name: str = "snapgroup"
    ) -> PostgresSession:
        """Connect to PostgreSQL: one session, to be held through the freeze window."""
        return await PostgresConnection.open(secret, timeout, application_name)

    async def mongo(
        self, secret: Mapping[str, str], timeout: float, app_name: str = "snapgroup"
    ) -> MongoSession:
        """Create a MongoDB client named app_name; it connects on first use."""
        return await MongoConnection.open(secret, timeout, app_name)

    async def object_store(self, secret: Mapping[str, str], timeout: float) -> ObjectStoreSession:
        """Create an S3 / MinIO client; it connects on first use."""
        return await ObjectStoreConnection.open(secret, timeout)

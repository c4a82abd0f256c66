"""`app` command line: bootstrap organisations, agents and instances, and load demo data.

app admin create-org "Acme Support"
app admin create-agent --org acme-support --email ana@acme.test --name Ana --role admin
app admin create-instance --org acme-support --gateway evolution --name acme-main --json
app demo-data
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import click
from advanced_alchemy.exceptions import NotFoundError, RepositoryError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import ConfigurationError, get_settings
from app.db.engine import APPLICATION_NAME, DatabaseUnreachable, build_engine
from app.db.models import AgentRole, GatewayKind, Organization, WhatsAppInstance
from app.domain.accounts.services import AgentService, OrganizationService
from app.domain.gateways.instances import IncompleteInstance, InstanceService, webhook_url

T = TypeVar("T")


def _run(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    settings = get_settings()  # before any connection: missing configuration is one line (CliGroup)

    async def main() -> T:
        engine = build_engine(settings.db, application_name=f"{APPLICATION_NAME}-cli", pooled=False)
        try:
            async with async_sessionmaker(engine, expire_on_commit=False)() as session:
                result = await work(session)
                await session.commit()
                return result
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except NotFoundError:
        raise click.ClickException("not found") from None
    except (SQLAlchemyError, RepositoryError, DatabaseUnreachable) as exc:
        raise click.ClickException(describe_database_error(exc)) from None


def _driver_error(exc: BaseException) -> BaseException | None:
    """The driver's own error under SQLAlchemy's and advanced-alchemy's wrappers (which call any failed
    statement an IntegrityError: a prepared-statement clash among them, issue 14)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (asyncpg.PostgresError, OSError)):
            return cause
        cause = getattr(cause, "orig", None) or cause.__cause__
    return None


def describe_database_error(exc: BaseException) -> str:
    """What went wrong, in the driver's words: a uniqueness error only when Postgres said so (SQLSTATE 23…);
    never the statement's parameters (secrets)."""
    driver = _driver_error(exc)
    if isinstance(driver, OSError):
        return f"database unreachable: {driver}"
    if not isinstance(driver, asyncpg.PostgresError):
        return f"database error: {type(exc).__name__}"
    message = str(driver).splitlines()[0] if str(driver) else type(driver).__name__
    if driver.sqlstate.startswith("23"):
        constraint = getattr(driver, "constraint_name", None)
        where = f"{constraint} ({message})" if constraint else message
        return f"already exists or conflicts with existing data: {where}"
    return f"database error {driver.sqlstate} ({type(driver).__name__}): {message}"


class CliGroup(click.Group):
    """Missing or unreadable configuration (DATABASE_URL, REDIS_URL, JWT_SECRET...): one line on stderr
    and exit 2, as for a usage error, instead of a traceback (issue 14)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            click.echo(f"app: {exc}", err=True)
            ctx.exit(2)


def _emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    for key, value in data.items():
        click.echo(f"{key}: {value}")


async def _org_by_slug(session: AsyncSession, slug: str) -> Organization:
    org = await OrganizationService(session=session).get_one_or_none(slug=slug)
    if org is None:
        raise click.ClickException(f"no organisation with slug '{slug}'")
    return org


def instance_details(instance: WhatsAppInstance) -> dict[str, Any]:
    """What an operator pastes into the gateway's webhook settings."""
    base = get_settings().app.public_base_url
    details: dict[str, Any] = {
        "instance_id": str(instance.id),
        "gateway": instance.gateway.value,
        "name": instance.name,
        "webhook_url": webhook_url(base, instance),
        "webhook_secret": instance.webhook_secret,
    }
    if instance.gateway is GatewayKind.CLOUDAPI:
        details["app_secret_note"] = "webhook_secret is the Meta app secret that signs X-Hub-Signature-256"
        details["verify_token"] = instance.verify_token
        details["phone_number_id"] = instance.phone_number_id
    else:
        details["secret_usage"] = "send as header X-Webhook-Secret, Authorization: Bearer, or ?token="
    return details


@click.group(cls=CliGroup)
def main() -> None:
    """WhatsApp CRM administration."""


@main.group()
def admin() -> None:
    """Create organisations, agents and WhatsApp instances."""


@admin.command("create-org")
@click.argument("name")
@click.option("--slug", help="URL-safe identifier (default: derived from the name)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def create_org(name: str, slug: str | None, as_json: bool) -> None:
    org = _run(lambda s: OrganizationService(session=s).create_organization(name, slug))
    _emit({"org_id": str(org.id), "name": org.name, "slug": org.slug}, as_json)


@admin.command("create-agent")
@click.option("--org", "org_slug", required=True)
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--role", type=click.Choice([r.value for r in AgentRole]), default=AgentRole.AGENT.value)
@click.option("--json", "as_json", is_flag=True)
def create_agent(org_slug: str, email: str, name: str, password: str, role: str, as_json: bool) -> None:
    if len(password) < 8:
        raise click.ClickException("password must have at least 8 characters")

    async def work(session: AsyncSession) -> Any:
        org = await _org_by_slug(session, org_slug)
        return await AgentService(session=session).create_agent(
            org=org, email=email, name=name, password=password, role=AgentRole(role)
        )

    agent = _run(work)
    _emit({"agent_id": str(agent.id), "email": agent.email, "role": agent.role.value}, as_json)


@admin.command("set-agent-active")
@click.option("--email", required=True)
@click.option("--active/--inactive", required=True, help="--inactive also refuses the agent's tokens")
@click.option("--json", "as_json", is_flag=True)
def set_agent_active(email: str, active: bool, as_json: bool) -> None:
    """Let an agent log in again, or stop them: their tokens are refused on every API process at once."""
    agent = _run(lambda s: AgentService(session=s).set_active(email, active))
    _emit({"agent_id": str(agent.id), "email": agent.email, "is_active": agent.is_active}, as_json)


@admin.command("sign-out-agent")
@click.option("--email", required=True)
@click.option("--json", "as_json", is_flag=True)
def sign_out_agent(email: str, as_json: bool) -> None:
    """Refuse every access token the agent holds now (on every API process, at once); logging in works."""
    agent = _run(lambda s: AgentService(session=s).sign_out_everywhere(email))
    _emit({"agent_id": str(agent.id), "email": agent.email}, as_json)


@admin.command("create-instance")
@click.option("--org", "org_slug", required=True)
@click.option("--gateway", type=click.Choice([g.value for g in GatewayKind]), required=True)
@click.option("--name", required=True, help="the gateway's session/instance name (Cloud API: any label)")
@click.option("--webhook-secret", help="default: a new random secret (Cloud API: your Meta app secret)")
@click.option("--verify-token", help="Cloud API GET handshake token (default: random)")
@click.option("--api-base-url", help="gateway base URL for sending and media")
@click.option("--api-token", help="gateway API token / Cloud API access token")
@click.option("--phone-number-id", help="Cloud API phone number id (required for Cloud API)")
@click.option("--json", "as_json", is_flag=True)
def create_instance(org_slug: str, gateway: str, name: str, as_json: bool, **options: str | None) -> None:
    async def work(session: AsyncSession) -> WhatsAppInstance:
        org = await _org_by_slug(session, org_slug)
        try:
            return await InstanceService(session=session).create_instance(
                org=org, gateway=GatewayKind(gateway), name=name, **options
            )
        except IncompleteInstance as exc:
            raise click.ClickException(str(exc)) from None

    _emit(instance_details(_run(work)), as_json)


@main.command("demo-data")
def demo_data() -> None:
    """Create a demo org, an admin agent, one instance per gateway and a few conversations; print JSON."""
    from app.demo import create_demo_data

    data = _run(create_demo_data)
    for instance in data.pop("_instances"):
        data["instances"].append(instance_details(instance))
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

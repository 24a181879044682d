"""Teams' own approver groups: the identity automation a team runs, on Vault/OpenBao identity.

People are Vault identity entities (named after the person), approver groups are internal identity
groups (`lockgate.bootstrap` seeds the dev ones). Approval policies name groups (`@approval("it-security")`)
and the worker checks membership in Vault when it verifies an approval, so a group created here is
usable at once, without a restart.

Everything goes through the caller's own Vault token (the logged-in operator's, or one passed
explicitly): Vault decides who may change which group (`group_admin_policy()` is what such a token
needs). lockgate never holds an identity-admin credential for this.

    directory = Directory(vaultio.client(VAULT_ADDR, token))  # lockgate.vaultio
    directory.create_group("it-security")
    directory.add_members("it-security", ["carol"])
    directory.groups()  # {"finance": ["alice", "bob"], "it-security": ["carol"], ...}
"""

from __future__ import annotations

from typing import Any

import hvac
import hvac.exceptions
import requests

from lockgate import vaultio
from lockgate.errors import UserError
from lockgate.names import PERSON_POLICY
from lockgate.people import valid_person

__all__ = ["Directory", "group_admin_policy"]


def group_admin_policy() -> str:
    """The Vault policy a token needs to manage approver groups with `Directory` (and `lockgate
    groups`): identity groups and entities, and the person policy (which names every group, so that
    members can read their group's name)."""
    return (
        'path "identity/group" { capabilities = ["update"] }\n'
        'path "identity/group/name/*" { capabilities = ["create", "read", "update"] }\n'
        'path "identity/group/name" { capabilities = ["list"] }\n'
        'path "identity/group/id/*" { capabilities = ["read"] }\n'
        'path "identity/entity/name/*" { capabilities = ["read"] }\n'
        'path "identity/entity/name" { capabilities = ["list"] }\n'
        'path "identity/entity/id/*" { capabilities = ["read"] }\n'
        f'path "sys/policies/acl/{PERSON_POLICY}" {{ capabilities = ["read", "update"] }}\n'
        f'path "sys/policy/{PERSON_POLICY}" {{ capabilities = ["read", "update"] }}\n'
    )


class Directory:
    """People and approver groups as Vault identity holds them, read and changed with the caller's
    own token.

    Args:
        client: An hvac client logged in as whoever manages the groups.

    Raises:
        UserError: every method, on a refusal by Vault (one line naming what was refused), an
            unknown person or group, or Vault unreachable.
    """

    def __init__(self, client: hvac.Client) -> None:
        self._client = client

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except hvac.exceptions.Forbidden:
            raise UserError(
                f"Vault refused to {what}: this token may not manage identity groups "
                "(it needs lockgate.teams.group_admin_policy())"
            ) from None
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as err:
            raise UserError(f"Vault could not {what}: {err}") from None
        except requests.RequestException:
            raise UserError(f"cannot reach Vault to {what}") from None

    def _list(self, path: str, what: str) -> list[str]:
        resp = self._call(what, lambda: self._client.list(path))
        return sorted(vaultio.body(resp).get("data", {}).get("keys") or []) if resp is not None else []

    def _group(self, name: str) -> dict[str, Any] | None:
        data = self._call(f"read group {name}", lambda: vaultio.read(self._client, f"identity/group/name/{name}"))
        return (data or {}).get("data")

    def _entity_id(self, person: str) -> str:
        if not valid_person(person):
            raise UserError(f"not a person's name: {person!r}")
        data = self._call(f"read person {person}", lambda: vaultio.read(self._client, f"identity/entity/name/{person}"))
        entity = (data or {}).get("data")
        if not entity:
            raise UserError(f"no such person: {person} (no Vault identity entity of that name)")
        return str(entity["id"])

    def _names(self, entity_ids: list[str]) -> list[str]:
        out = []
        for eid in entity_ids:
            data = self._call("read a member", lambda eid=eid: vaultio.read(self._client, f"identity/entity/id/{eid}"))
            out.append(str(((data or {}).get("data") or {}).get("name") or f"entity:{eid}"))
        return sorted(out)

    # -- reading ---------------------------------------------------------------------------------
    def groups(self) -> dict[str, list[str]]:
        """Every identity group with its members' names."""
        out = {}
        for name in self._list("identity/group/name", "list groups"):
            group = self._group(name) or {}
            out[name] = self._names(list(group.get("member_entity_ids") or []))
        return out

    def people(self) -> dict[str, list[str]]:
        """Every person (identity entity) with the groups they are in."""
        groups = self.groups()
        return {
            person: sorted(g for g, members in groups.items() if person in members)
            for person in self._list("identity/entity/name", "list people")
        }

    # -- changing --------------------------------------------------------------------------------
    def create_group(self, name: str) -> bool:
        """Creates an approver group (idempotent: an existing group is left as it is). Returns True
        if it was created."""
        if not valid_person(name):
            raise UserError(f"not a group name: {name!r}")
        if self._group(name) is not None:
            return False
        self._call(
            f"create group {name}",
            lambda: vaultio.write(self._client, f"identity/group/name/{name}", type="internal", member_entity_ids=[]),
        )
        self._name_groups_in_person_policy()
        return True

    def _set_members(self, group: str, change: Any) -> list[str]:
        current = self._group(group)
        if current is None:
            raise UserError(f"no such group: {group} (lockgate groups create {group})")
        if current.get("type") != "internal":
            raise UserError(f"group {group} is {current.get('type')}: its members come from elsewhere")
        members = change(set(current.get("member_entity_ids") or []))
        self._call(
            f"change the members of {group}",
            lambda: vaultio.write(
                self._client, f"identity/group/name/{group}", type="internal", member_entity_ids=sorted(members)
            ),
        )
        return self._names(sorted(members))

    def add_members(self, group: str, people: list[str]) -> list[str]:
        """Adds people to a group; returns its members."""
        ids = {self._entity_id(p) for p in people}
        return self._set_members(group, lambda current: current | ids)

    def remove_members(self, group: str, people: list[str]) -> list[str]:
        """Removes people from a group; returns its members."""
        ids = {self._entity_id(p) for p in people}
        return self._set_members(group, lambda current: current - ids)

    def _name_groups_in_person_policy(self) -> None:
        """Every person's token may read the name of the groups they are in (`lockgate whoami`):
        the person policy names each group (a templated path that resolves only for members), so a
        new group gets its line there."""
        current = self._call(
            f"read the policy {PERSON_POLICY}", lambda: self._client.sys.read_policy(name=PERSON_POLICY)
        )
        text = str(vaultio.body(current).get("data", {}).get("rules") or vaultio.body(current).get("rules") or "")
        missing = [
            _member_reads_group(g)
            for g in self._list("identity/group/name", "list groups")
            if _member_reads_group(g) not in text
        ]
        if not missing:
            return
        policy = text.rstrip("\n") + "\n" + "\n".join(missing) + "\n"
        self._call(
            f"update the policy {PERSON_POLICY}",
            lambda: self._client.sys.create_or_update_policy(name=PERSON_POLICY, policy=policy),
        )


def _member_reads_group(group: str) -> str:
    """The person-policy line that lets a group's members (only them) read its name."""
    return f'path "identity/group/id/{{{{identity.groups.names.{group}.id}}}}" {{ capabilities = ["read"] }}'

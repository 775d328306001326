# SPDX-License-Identifier: MIT
"""The schema model: checks every expression and resolves type references.

Rules enforced (each has a bad schema under tests/schema/):
  names      commands lowercase-dash (plus an explicit legacy list), events UPPER_SNAKE,
             types CamelCase, members and enum values lowercase
  docs       every definition has a `##` block naming it, with `Since:`; commands an example
  types      every referenced type exists; names are unique; unions and alternates are sound
"""

import re

from qapi_parser import QapiError

# Builtin type -> (C++ type, introspection json-type, wire name in introspection)
BUILTINS = {
    'str': ('std::string', 'string', 'str'),
    'int': ('std::int64_t', 'int', 'int'),
    'int8': ('std::int8_t', 'int', 'int'),
    'int16': ('std::int16_t', 'int', 'int'),
    'int32': ('std::int32_t', 'int', 'int'),
    'int64': ('std::int64_t', 'int', 'int'),
    'uint8': ('std::uint8_t', 'int', 'int'),
    'uint16': ('std::uint16_t', 'int', 'int'),
    'uint32': ('std::uint32_t', 'int', 'int'),
    'uint64': ('std::uint64_t', 'int', 'int'),
    'size': ('std::uint64_t', 'int', 'int'),
    'number': ('double', 'number', 'number'),
    'bool': ('bool', 'boolean', 'bool'),
    'null': ('std::nullptr_t', 'null', 'null'),
    'any': ('boost::json::value', 'value', 'any'),
}

# Command names QEMU spelled with underscores before the lowercase-dash rule; new commands
# may not use underscores.
LEGACY_COMMAND_NAMES = {
    'qmp_capabilities', 'block_resize', 'block_set_io_throttle', 'block_passwd',
    'device_add', 'device_del', 'netdev_add', 'netdev_del', 'set_link', 'balloon',
    'system_reset', 'system_powerdown', 'system_wakeup', 'inject_nmi', 'migrate_cancel',
    'migrate_set_speed', 'migrate_set_downtime', 'client_migrate_info', 'dump_guest_memory',
    'expire_password', 'set_password', 'human_monitor_command', 'add_client',
}

# Member names QEMU spelled in capitals (its 'member-name-exceptions' pragma): query-cpus'
# CpuInfo.CPU and the MIPS/TriCore program counter PC.
LEGACY_MEMBER_NAMES = {'CPU', 'PC'}

COMMAND_RE = re.compile(r'^[a-z][a-z0-9]*(-[a-z0-9]+)*$')
EVENT_RE = re.compile(r'^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$')
TYPE_RE = re.compile(r'^[A-Z][A-Za-z0-9]*$')
MEMBER_RE = re.compile(r'^[a-z][a-z0-9]*([-_][a-z0-9]+)*$')
ENUM_VALUE_RE = re.compile(r'^[a-z0-9][a-z0-9]*([-_.][a-z0-9]+)*$')

META_KEYS = {
    'enum': {'enum', 'data', 'features', 'prefix'},
    'struct': {'struct', 'data', 'base', 'features'},
    'union': {'union', 'base', 'discriminator', 'data', 'features'},
    'alternate': {'alternate', 'data', 'features'},
    'command': {'command', 'data', 'returns', 'boxed', 'allow-oob', 'features', 'gen',
                'success-response', 'allow-preconfig', 'coroutine'},
    'event': {'event', 'data', 'features'},
}


class Member:
    def __init__(self, name, typ, optional, features):
        self.name = name
        self.typ = typ            # type reference: 'Name' or ['Name'] until resolved; then TypeRef
        self.optional = optional
        self.features = features


class Entity:
    def __init__(self, meta, name, info, doc, features):
        self.meta = meta
        self.name = name
        self.info = info
        self.doc = doc
        self.features = features


class Enum(Entity):
    def __init__(self, name, info, doc, features, values):
        super().__init__('enum', name, info, doc, features)
        self.values = values      # [(name, features)]


class Struct(Entity):
    """A struct, a union (tag + branches) or an implicit argument/data object."""

    def __init__(self, name, info, doc, features, base, members, implicit=False):
        super().__init__('struct', name, info, doc, features)
        self.base = base
        self.own_members = members
        self.members = None       # base members + own members, after resolve
        self.implicit = implicit
        self.tag = None           # union discriminator member name
        self.branches = []        # [(enum value, struct name)]


class Alternate(Entity):
    def __init__(self, name, info, doc, features, branches):
        super().__init__('alternate', name, info, doc, features)
        self.branches = branches  # [(name, type name)]


class Command(Entity):
    def __init__(self, name, info, doc, features, data, returns, boxed, allow_oob):
        super().__init__('command', name, info, doc, features)
        self.data = data          # Struct name or None
        self.returns = returns    # type ref or None
        self.boxed = boxed
        self.allow_oob = allow_oob


class Event(Entity):
    def __init__(self, name, info, doc, features, data):
        super().__init__('event', name, info, doc, features)
        self.data = data


def _features(info, expr, what):
    feats = expr.get('features', [])
    if not isinstance(feats, list):
        raise QapiError(info, "%s: 'features' must be an array" % what)
    out = []
    for f in feats:
        if isinstance(f, dict):
            f = f.get('name')
        if not isinstance(f, str) or not MEMBER_RE.match(f):
            raise QapiError(info, "%s: bad feature %r" % (what, f))
        out.append(f)
    return out


def _type_ref(info, ref, what):
    if isinstance(ref, str):
        return ref
    if isinstance(ref, list) and len(ref) == 1 and isinstance(ref[0], str):
        return ref
    raise QapiError(info, '%s must be a type name or a one-element array' % what)


def _members(info, data, what):
    if not isinstance(data, dict):
        raise QapiError(info, "%s: 'data' must be an object" % what)
    out = []
    names = set()
    for key, val in data.items():
        optional = key.startswith('*')
        name = key[1:] if optional else key
        feats = []
        if isinstance(val, dict):
            if 'type' not in val or not set(val) <= {'type', 'features'}:
                raise QapiError(info, "%s member '%s': expected {'type': ..., 'features': ...}"
                                % (what, name))
            feats = _features(info, val, '%s member %s' % (what, name))
            val = val['type']
        if not MEMBER_RE.match(name) and name not in LEGACY_MEMBER_NAMES:
            raise QapiError(info, "%s member '%s' should be lowercase" % (what, name))
        if name.replace('_', '-') in names:
            raise QapiError(info, "%s has duplicate member '%s'" % (what, name))
        names.add(name.replace('_', '-'))
        out.append(Member(name, _type_ref(info, val, "%s member '%s'" % (what, name)),
                          optional, feats))
    return out


class Schema:
    def __init__(self, exprs):
        self.entities = []        # in definition order, implicit structs included
        self.by_name = {}
        for expr, info, doc in exprs:
            self._add_expr(expr, info, doc)
        for e in list(self.entities):
            self._resolve(e)
        for e in self.entities:
            self._check(e)

    # -- reading -------------------------------------------------------------------------

    def _define(self, ent):
        if ent.name in BUILTINS or ent.name in self.by_name:
            prev = self.by_name.get(ent.name)
            where = ' (first defined at %s)' % prev.info if prev else ''
            raise QapiError(ent.info, "'%s' is already defined%s" % (ent.name, where))
        self.by_name[ent.name] = ent
        self.entities.append(ent)

    def _add_expr(self, expr, info, doc):
        metas = [m for m in META_KEYS if m in expr]
        if len(metas) != 1:
            raise QapiError(info, 'expression must have exactly one of %s'
                            % ', '.join("'%s'" % m for m in META_KEYS))
        meta = metas[0]
        name = expr[meta]
        if not isinstance(name, str):
            raise QapiError(info, "'%s' must name the definition with a string" % meta)
        what = "%s '%s'" % (meta, name)
        for k in expr:
            if k not in META_KEYS[meta]:
                raise QapiError(info, "%s has unknown key '%s'" % (what, k))
        self._check_name(info, meta, name)
        self._check_doc(info, meta, name, doc)
        feats = _features(info, expr, what)

        if meta == 'enum':
            data = expr.get('data')
            if not isinstance(data, list) or not data:
                raise QapiError(info, "%s: 'data' must be a non-empty array" % what)
            values = []
            for v in data:
                vf = []
                if isinstance(v, dict):
                    vf = _features(info, v, what)
                    v = v.get('name')
                if not isinstance(v, str) or not ENUM_VALUE_RE.match(v):
                    raise QapiError(info, "%s value %r should be lowercase" % (what, v))
                if v in [x for x, _ in values]:
                    raise QapiError(info, "%s has duplicate value '%s'" % (what, v))
                values.append((v, vf))
            self._define(Enum(name, info, doc, feats, values))
        elif meta == 'struct':
            self._define(Struct(name, info, doc, feats, expr.get('base'),
                                _members(info, expr.get('data', {}), what)))
        elif meta == 'union':
            base = expr.get('base')
            if isinstance(base, dict):
                base_name = name + 'Base'
                self._define(Struct(base_name, info, None, [], None,
                                    _members(info, base, what), implicit=True))
                base = base_name
            if not isinstance(base, str):
                raise QapiError(info, "%s needs a 'base'" % what)
            disc = expr.get('discriminator')
            if not isinstance(disc, str):
                raise QapiError(info, "%s needs a 'discriminator'" % what)
            data = expr.get('data')
            if not isinstance(data, dict):
                raise QapiError(info, "%s: 'data' must be an object" % what)
            s = Struct(name, info, doc, feats, base, [])
            s.tag = disc
            for case, typ in data.items():
                if isinstance(typ, dict):
                    typ = typ.get('type')
                if not isinstance(typ, str):
                    raise QapiError(info, "%s branch '%s' must name a struct" % (what, case))
                s.branches.append((case, typ))
            self._define(s)
        elif meta == 'alternate':
            data = expr.get('data')
            if not isinstance(data, dict) or not data:
                raise QapiError(info, "%s: 'data' must be a non-empty object" % what)
            branches = []
            for bname, typ in data.items():
                if isinstance(typ, dict):
                    typ = typ.get('type')
                if not isinstance(typ, str):
                    raise QapiError(info, "%s branch '%s' must name a type" % (what, bname))
                branches.append((bname, typ))
            self._define(Alternate(name, info, doc, feats, branches))
        elif meta == 'command':
            boxed = expr.get('boxed', False)
            data = expr.get('data')
            if boxed and not isinstance(data, str):
                raise QapiError(info, "%s: 'boxed' requires 'data' to name a type" % what)
            data = self._implicit(info, name, data, what)
            returns = expr.get('returns')
            if returns is not None:
                returns = _type_ref(info, returns, "%s 'returns'" % what)
            oob = expr.get('allow-oob', False)
            if not isinstance(oob, bool) or not isinstance(boxed, bool):
                raise QapiError(info, "%s: 'allow-oob' and 'boxed' must be true or false" % what)
            cmd = Command(name, info, doc, feats, data, returns, boxed, oob)
            cmd.gen = expr.get('gen', True)
            if cmd.gen is not True and name != 'query-qmp-schema':
                raise QapiError(info, "%s: only query-qmp-schema may use 'gen': false "
                                "(its answer is generated)" % what)
            self._define(cmd)
        elif meta == 'event':
            data = self._implicit(info, name, expr.get('data'), what)
            self._define(Event(name, info, doc, feats, data))

    def _implicit(self, info, owner, data, what):
        if data is None or isinstance(data, str):
            return data
        if isinstance(data, dict):
            s = Struct('q_obj_%s-arg' % owner, info, None, [], None,
                       _members(info, data, what), implicit=True)
            s.owner = owner
            self._define(s)
            return s.name
        raise QapiError(info, "%s: 'data' must be an object or a type name" % what)

    def _check_name(self, info, meta, name):
        if meta == 'command':
            if not COMMAND_RE.match(name) and name not in LEGACY_COMMAND_NAMES:
                raise QapiError(info, "command name '%s' should be lowercase-dash" % name)
        elif meta == 'event':
            if not EVENT_RE.match(name):
                raise QapiError(info, "event name '%s' should be UPPER_SNAKE" % name)
        elif not TYPE_RE.match(name):
            raise QapiError(info, "type name '%s' should be CamelCase" % name)

    def _check_doc(self, info, meta, name, doc):
        if doc is None:
            raise QapiError(info, "%s '%s' lacks a '##' documentation block" % (meta, name))
        if doc.symbol != name:
            raise QapiError(doc.info, "documentation block should start with '@%s:'" % name)
        if not doc.has_section('Since'):
            raise QapiError(doc.info, "documentation of '%s' lacks 'Since:'" % name)
        if meta == 'command' and not doc.has_section('Example'):
            raise QapiError(doc.info, "documentation of command '%s' lacks an 'Example:'" % name)

    # -- resolving -----------------------------------------------------------------------

    def lookup(self, ref):
        """Entity (or builtin name) for a type ref; lists stay lists."""
        if isinstance(ref, list):
            return [self.lookup(ref[0])]
        if ref in BUILTINS:
            return ref
        return self.by_name.get(ref)

    def _need_type(self, info, ref, what, metas=('enum', 'struct', 'alternate', 'builtin')):
        name = ref[0] if isinstance(ref, list) else ref
        if name in BUILTINS:
            if 'builtin' not in metas:
                raise QapiError(info, "%s must be %s, not builtin type '%s'"
                                % (what, _metas_text(metas), name))
            return
        ent = self.by_name.get(name)
        if ent is None:
            raise QapiError(info, "%s uses unknown type '%s'" % (what, name))
        if ent.meta not in metas:
            raise QapiError(info, "%s must be %s, not %s '%s'"
                            % (what, _metas_text(metas), _kind(ent), name))

    def _struct_members(self, s, stack=()):
        if s.members is not None:
            return s.members
        if s.name in stack:
            raise QapiError(s.info, "struct '%s' is its own base" % s.name)
        members = []
        if s.base is not None:
            self._need_type(s.info, s.base, "%s '%s' base" % (_kind(s), s.name), ('struct',))
            base = self.by_name[s.base]
            if base.tag is not None:
                raise QapiError(s.info, "%s '%s' base must be a struct, not union '%s'"
                                % (_kind(s), s.name, s.base))
            members = list(self._struct_members(base, stack + (s.name,)))
        names = {m.name.replace('_', '-') for m in members}
        for m in s.own_members:
            if m.name.replace('_', '-') in names:
                raise QapiError(s.info, "%s '%s' member '%s' clashes with its base"
                                % (_kind(s), s.name, m.name))
            names.add(m.name.replace('_', '-'))
            members.append(m)
        s.members = members
        return members

    def _resolve(self, e):
        if isinstance(e, Struct):
            self._struct_members(e)

    def _check(self, e):
        what = "%s '%s'" % (_kind(e), e.name) if not getattr(e, 'implicit', False) \
            else "'data' of '%s'" % getattr(e, 'owner', e.name)
        if isinstance(e, Struct):
            for m in e.members:
                self._need_type(e.info, m.typ, "%s member '%s'" % (what, m.name))
            if e.tag is not None:
                self._check_union(e, what)
        elif isinstance(e, Alternate):
            seen = {}
            for bname, typ in e.branches:
                self._need_type(e.info, typ, "%s branch '%s'" % (what, bname),
                                ('enum', 'struct', 'builtin'))
                jt = self.json_kind(typ)
                if jt in seen:
                    raise QapiError(e.info, "%s branches '%s' and '%s' are both %s"
                                    % (what, seen[jt], bname, jt))
                seen[jt] = bname
        elif isinstance(e, Command):
            if e.data is not None:
                self._need_type(e.info, e.data, "%s 'data'" % what, ('struct',))
                if not e.boxed and self.by_name[e.data].tag is not None:
                    raise QapiError(e.info, "%s: a union argument needs 'boxed': true" % what)
            if e.returns is not None:
                self._need_type(e.info, e.returns, "%s 'returns'" % what,
                                ('struct', 'enum', 'alternate', 'builtin'))
        elif isinstance(e, Event):
            if e.data is not None:
                self._need_type(e.info, e.data, "%s 'data'" % what, ('struct',))

    def _check_union(self, u, what):
        tag = next((m for m in u.members if m.name == u.tag), None)
        if tag is None:
            raise QapiError(u.info, "%s discriminator '%s' is not a member of its base"
                            % (what, u.tag))
        tag_type = self.by_name.get(tag.typ) if isinstance(tag.typ, str) else None
        if not isinstance(tag_type, Enum):
            raise QapiError(u.info, "%s discriminator '%s' must be an enum" % (what, u.tag))
        if tag.optional:
            raise QapiError(u.info, "%s discriminator '%s' must not be optional" % (what, u.tag))
        values = [v for v, _ in tag_type.values]
        branch_names = set()
        for case, typ in u.branches:
            if case not in values:
                raise QapiError(u.info, "%s branch '%s' is not a value of %s"
                                % (what, case, tag_type.name))
            self._need_type(u.info, typ, "%s branch '%s'" % (what, case), ('struct',))
            b = self.by_name[typ]
            if b.tag is not None:
                raise QapiError(u.info, "%s branch '%s' must be a struct, not union '%s'"
                                % (what, case, typ))
            base_names = {m.name.replace('_', '-') for m in u.members}
            for m in b.members:
                if m.name.replace('_', '-') in base_names:
                    raise QapiError(u.info, "%s branch '%s' member '%s' clashes with the base"
                                    % (what, case, m.name))
            branch_names.add(case)
        u.tag_enum = tag_type

    def json_kind(self, ref):
        """The JSON type an alternate branch matches: string, number, boolean, null, object."""
        if isinstance(ref, list):
            return 'array'
        if ref in BUILTINS:
            jt = BUILTINS[ref][1]
            return {'int': 'number', 'value': 'any'}.get(jt, jt)
        ent = self.by_name[ref]
        return {'enum': 'string', 'struct': 'object', 'alternate': 'alternate'}[ent.meta]

    # -- views ---------------------------------------------------------------------------

    def of(self, cls):
        return [e for e in self.entities if isinstance(e, cls)]


def _kind(e):
    if isinstance(e, Struct):
        return 'union' if e.tag is not None else 'struct'
    return e.meta


def _metas_text(metas):
    words = {'struct': 'a struct', 'enum': 'an enum', 'alternate': 'an alternate',
             'builtin': 'a builtin type'}
    return ' or '.join(words[m] for m in metas)

